#!/usr/bin/env python3
"""Entry point for a fresh checkout: bootstrap ``.venv``, then run ``piccolo-build``.

    python3 build.py render            # any piccolo-build command, with its arguments
    python3 build.py check             # piccolo-build check, after installing the linters it runs
    python3 build.py test [PYTEST...]  # install what the tests need (apt too, as root) and run them all
    python3 build.py test --fast       # the everyday tier: no systemd boots, no virtual machines
    python3 build.py lock-env          # re-resolve the pinned environment: rewrite constraints.txt

Every install is pinned: pip gets ``constraints.txt`` (exact versions of every package the ``test``
extra resolves to, transitive ones included), so a new release of a dependency never changes the tool
under a green suite. The virtual environment is (re)installed when ``pyproject.toml`` or
``constraints.txt`` changes. ``lock-env`` is the one way to move the pins: it resolves ``.[test]`` in
a throwaway environment, with the agent's runtime packages held at the versions the device gets
(the shipped ``piccolo.lock.json``), and writes what pip chose. Only the standard library is used here,
because nothing else is installed yet.

``test`` also downloads, once, what the tests read instead of PyPI (tests never touch a public
address): the locked dependency sdists and PyPI's JSON documents of those packages, into
``$PICCOLO_TEST_CACHE`` (default ``.venv/test-cache``, ignored by git), with the project's own
``piccolo-build lock --fetch-only``; files already there and matching the lock are not fetched again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
CONSTRAINTS = ROOT / "constraints.txt"
DEVICE_LOCK = ROOT / "piccolo_build" / "data" / "piccolo.lock.json"
# What the tests read instead of the network (tests/test_lock.py reads the same variable and default).
TEST_CACHE_VARIABLE = "PICCOLO_TEST_CACHE"
TEST_CACHE = VENV / "test-cache"

# Debian packages the test suite drives for real (docs/testing.md): a private dockerd with busybox images,
# swtpm and the TSS headers tpm2-pytss builds against, GPT tools, systemd-nspawn, sysext tooling, gpg,
# Prometheus; QEMU, OVMF, kmod and the SSH client for the VM tests (docs/vm-test.md: the stand-in's kernel
# is downloaded with apt-get, its package tree made with debootstrap).
APT_PACKAGES = (
    "docker.io",
    "busybox-static",
    "swtpm",
    "swtpm-tools",
    "tpm2-tools",
    "libtss2-dev",
    "pkg-config",
    "gdisk",
    "cgpt",
    "gawk",
    "shellcheck",
    "squashfs-tools",
    "systemd-container",
    "gnupg",
    "iproute2",
    "e2fsprogs",
    "btrfs-progs",
    "git",
    "debootstrap",
    "prometheus",  # promtool checks and unit-tests the alert rules; a real Prometheus runs them
    "qemu-system-x86",
    "qemu-utils",
    "ovmf",
    "kmod",
    "openssh-client",
)
# What `piccolo-build check` runs besides the `check` extra's pkgcheck and shellcheck: systemd-analyze, and
# promtool (Debian's prometheus package) on the alert rules.
CHECK_APT_PACKAGES = ("systemd", "prometheus")

# The systemd-257 machine the gate's boot tests run (tests/fixtures/nspawn.py): a Debian trixie root from
# Debian's registry, made once and rebuilt only when it is missing or this list changes. systemd and D-Bus
# boot it; gdisk and util-linux are what the base image's guard uses (sgdisk, blkid); the host's Python
# and its libraries are bound in by the tests.
TRIXIE_ROOT = VENV / "trixie-root"
TRIXIE_INCLUDE = ("systemd", "systemd-sysv", "dbus", "gdisk", "util-linux", "mawk")

# The GCC 15 machine tests/test_gcc15.py builds tpm2-pytss in, as the Flatcar SDK compiles it from
# alpha-4790 on: a Debian testing root (its gcc-15, the Python packages tpm2-pytss's build and import
# need) made once with debootstrap and rebuilt only when what it is made of changes. The TSS comes from
# trixie, pinned: 4.1.3 is what every Flatcar tag ships, and testing's 4.2 headers are a different
# problem (tpm2-pytss 2.3.0 cannot read them with any compiler).
GCC15_ROOT = VENV / "gcc15-root"
GCC15_SUITE = "testing"
GCC15_INCLUDE = (
    "gcc-15",
    "libc6-dev",
    "patch",
    "pkgconf",
    "python3-dev",
    "python3-cffi",
    "python3-pycparser",
    "python3-setuptools",
    "python3-setuptools-scm",
    "python3-pkgconfig",
    "python3-cryptography",
    "python3-asn1crypto",
    "python3-packaging",
    "python3-yaml",
)
GCC15_PINNED_SUITE = "trixie"
GCC15_PINNED_SOURCES = "src:tpm2-tss tpm-udev"  # apt preferences: every binary package of these sources
GCC15_PINNED_PACKAGES = ("libtss2-dev",)
DEBIAN_MIRROR = "http://deb.debian.org/debian"


# `test --fast`: everything but the tests that boot systemd as PID 1 or a virtual machine, the full
# corpora of the seeded fuzzes (their seeded slices stay) and the slow ones (real daemons and builds that
# take more than a few seconds each: the builder's end-to-end builds, dockerd, GCC 15); the markers are in
# pyproject.toml, tests/conftest.py refuses a booting test without its marker.
FAST_TIER = "not boot and not vm and not full and not slow"


def run(*argv: str | Path) -> None:
    print("+", " ".join(map(str, argv)), flush=True)
    subprocess.run([str(a) for a in argv], check=True)


def apt_install(packages: tuple[str, ...] = APT_PACKAGES) -> None:
    missing = [
        p
        for p in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
        ).stdout
        != "install ok installed"
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"build.py: these Debian packages are needed: {' '.join(missing)} (run as root to install)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env
    )


def install_digest() -> str:
    """What an install depends on: the project's requirements and the pins."""
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()


def ensure_venv(extras: str) -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", VENV)
    digest = install_digest()
    stamp = VENV / f".installed-{extras or 'base'}"
    # The test extras include everything the base and check installs have.
    done = [s for s in (stamp, VENV / ".installed-test") if s.exists() and s.read_text() == digest]
    if not done:
        target = f"{ROOT}[{extras}]" if extras else str(ROOT)
        run(python, "-m", "pip", "install", "--quiet", "--constraint", CONSTRAINTS, "--editable", target)
        stamp.write_text(digest)
    return python


def lock_env() -> int:
    """Resolve ``.[test]`` afresh in a throwaway environment and write every version into
    constraints.txt; the agent's runtime packages are held at the device lock's versions."""
    import json
    import re
    import tempfile

    lock = json.loads(DEVICE_LOCK.read_text(encoding="utf-8"))
    device = sorted(f"{p['pypi_name']}=={p['version']}" for p in lock["packages"] if p["runtime"])
    with tempfile.TemporaryDirectory(prefix="piccolo-lock-env.") as tmp:
        seed = Path(tmp) / "device.txt"
        seed.write_text("".join(f"{pin}\n" for pin in device), encoding="utf-8")
        run(sys.executable, "-m", "venv", Path(tmp) / "venv")
        python = Path(tmp) / "venv" / "bin" / "python"
        run(python, "-m", "pip", "install", "--quiet", "--constraint", seed, "--editable", f"{ROOT}[test]")
        frozen = subprocess.run(
            [python, "-m", "pip", "freeze", "--all", "--exclude", "pip", "--exclude", "piccolo-build"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    pins = []
    for line in frozen.splitlines():
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"build.py: pip freeze gave an unpinned line: {line!r}")
        pins.append(f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}")
    pins.sort(key=lambda pin: pin.partition("==")[0])
    CONSTRAINTS.write_text(CONSTRAINTS_HEADER + "".join(f"{pin}\n" for pin in pins), encoding="utf-8")
    print(f"{CONSTRAINTS.name}: {len(pins)} pins (device: {', '.join(device)})")
    return 0


CONSTRAINTS_HEADER = """\
# Exact versions of every package `pip install .[test]` resolves to, transitive ones included.
# build.py installs every environment with these pins. Generated by `python3 build.py lock-env`
# (the agent's runtime packages held at piccolo.lock.json's versions): do not edit by hand.
"""


def fill_test_cache() -> None:
    """Download the locked sdists and their PyPI documents for the tests (an install step)."""
    cache = Path(os.environ.setdefault(TEST_CACHE_VARIABLE, str(TEST_CACHE)))
    try:
        run(VENV / "bin" / "piccolo-build", "lock", "--fetch-only", cache)
    except subprocess.CalledProcessError:
        sys.exit(f"build.py: cannot fill the tests' download cache {cache} (the error is above)")


def fill_wheelhouse() -> None:
    """Wheels of every pinned package an install of the project with the ``check`` extra needs, into
    ``$PICCOLO_TEST_CACHE/wheels``: the wheel-install test installs a freshly built wheel from there,
    offline. pip skips what is already there."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["check"]]
    wheels = Path(os.environ.setdefault(TEST_CACHE_VARIABLE, str(TEST_CACHE))) / "wheels"
    python = VENV / "bin" / "python"
    try:
        run(
            python,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--constraint",
            CONSTRAINTS,
            "--wheel-dir",
            wheels,
            *wanted,
        )
    except subprocess.CalledProcessError:
        sys.exit(f"build.py: cannot fill the tests' wheel cache {wheels} (the error is above)")


def cached_root(root: Path, want: str, what: str, make: Callable[[Path], None]) -> None:
    """Make the machine ``root`` with ``make(tmp)`` unless its stamp says it was made from ``want``:
    made in a temporary directory beside it and renamed into place, so a half-made root never counts."""
    stamp = root / ".piccolo-include"
    if stamp.is_file() and stamp.read_text() == want:
        return
    if os.geteuid() != 0:
        sys.exit(f"build.py: the {what} test machine needs root to make (debootstrap)")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    make(tmp)
    (tmp / stamp.name).write_text(want)
    tmp.rename(root)


def ensure_trixie_root() -> None:
    """``debootstrap --variant=minbase`` a trixie root for the systemd-257 boots (about 35 s, 260 MB)."""
    want = ",".join(TRIXIE_INCLUDE)
    cached_root(
        TRIXIE_ROOT,
        want,
        "systemd-257",
        lambda tmp: run("debootstrap", "--variant=minbase", f"--include={want}", "trixie", tmp),
    )


def ensure_gcc15_root() -> None:
    """``debootstrap --variant=minbase`` a Debian testing root with GCC 15 and the pinned TSS (about
    two minutes and 500-750 MB, once)."""
    suite, sources, packages = GCC15_PINNED_SUITE, GCC15_PINNED_SOURCES, GCC15_PINNED_PACKAGES
    include = ",".join(GCC15_INCLUDE)

    def make(tmp: Path) -> None:
        run("debootstrap", "--variant=minbase", f"--include={include}", GCC15_SUITE, tmp, DEBIAN_MIRROR)
        (tmp / "etc/apt/sources.list.d/piccolo-pinned.list").write_text(f"deb {DEBIAN_MIRROR} {suite} main\n")
        (tmp / "etc/apt/preferences.d/piccolo-pinned").write_text(
            f"Package: {sources}\nPin: release n={suite}\nPin-Priority: 1001\n"
        )
        # A mirror may serve Release files past their Valid-Until (a frozen mirror); the root is a test rig.
        apt: list[str | Path] = ["chroot", tmp, "apt-get", "-q", "-o", "Acquire::Check-Valid-Until=false"]
        run(*apt, "update")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        print("+", " ".join(map(str, [*apt, "install", *packages])), flush=True)
        subprocess.run(
            [*map(str, apt), "install", "-y", "--no-install-recommends", *packages], check=True, env=env
        )
        run(*apt, "clean")

    cached_root(GCC15_ROOT, f"{GCC15_SUITE} {include} {suite}:{sources}:{','.join(packages)}", "GCC 15", make)


def main(argv: list[str]) -> int:
    if argv[:1] == ["test"]:
        apt_install()
        python = ensure_venv("test")
        os.chdir(ROOT)
        fill_test_cache()
        fill_wheelhouse()
        args = argv[1:]
        if "--fast" in args:
            args = [a for a in args if a != "--fast"] + ["-m", FAST_TIER]
        else:
            ensure_gcc15_root()  # tests/test_gcc15.py (slow)
            ensure_trixie_root()  # only the boots use it
        # The slowest tests are named at the end of every run, so a run that grows shows where.
        return subprocess.run([str(python), "-m", "pytest", "--durations=25", *args], check=False).returncode
    if argv[:1] == ["lock-env"]:
        return lock_env()
    if argv[:1] == ["check"]:
        apt_install(CHECK_APT_PACKAGES)
        ensure_venv("check")
    else:
        ensure_venv("")
    cli = VENV / "bin" / "piccolo-build"
    os.execv(cli, [str(cli), *argv])  # noqa: S606 - replaces this bootstrap process with the CLI


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
