#!/usr/bin/env python3
"""Entry point for a fresh checkout: bootstrap ``.venv``, then run ``piccolo-build``.

    python3 build.py render            # any piccolo-build command, with its arguments
    python3 build.py test [PYTEST...]  # install what the tests need (apt too, as root) and run them all

The virtual environment is (re)installed when ``pyproject.toml`` changes. Only the standard library is
used here, because nothing else is installed yet.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
# What the tests read instead of the network (tests/test_lock.py reads the same variable and default).
TEST_CACHE_VARIABLE = "PICCOLO_TEST_CACHE"
TEST_CACHE = VENV / "test-cache"

# Debian packages the test suite drives for real (docs/testing.md): a private dockerd with busybox images,
# swtpm and the TSS headers tpm2-pytss builds against, GPT tools, systemd-nspawn, sysext tooling, gpg.
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
    "shellcheck",
    "squashfs-tools",
    "systemd-container",
    "gnupg",
    "iproute2",
    "e2fsprogs",
    "btrfs-progs",
    "git",
    "debootstrap",
)

# The systemd-257 machine the gate's boot tests run (tests/fixtures/nspawn.py): a Debian trixie root from
# Debian's registry, made once and rebuilt only when it is missing or this list changes. systemd and D-Bus
# boot it; gdisk and util-linux are what the base image's guard uses (sgdisk, blkid); the host's Python
# and its libraries are bound in by the tests.
TRIXIE_ROOT = VENV / "trixie-root"
TRIXIE_INCLUDE = ("systemd", "systemd-sysv", "dbus", "gdisk", "util-linux", "mawk")


def run(*argv: str | Path) -> None:
    print("+", " ".join(map(str, argv)), flush=True)
    subprocess.run([str(a) for a in argv], check=True)


def apt_install() -> None:
    missing = [
        p
        for p in APT_PACKAGES
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
        ).stdout
        != "install ok installed"
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            f"build.py: the tests need these Debian packages: {' '.join(missing)} (run as root to install)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env
    )


def ensure_venv(extras: str) -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / f".installed-{extras or 'base'}"
    # The test extras include everything the base install has.
    done = [s for s in (stamp, VENV / ".installed-test") if s.exists() and s.read_text() == digest]
    if not done:
        target = f"{ROOT}[{extras}]" if extras else str(ROOT)
        run(python, "-m", "pip", "install", "--quiet", "--editable", target)
        stamp.write_text(digest)
    return python


def fill_test_cache() -> None:
    """Download the locked sdists and their PyPI documents for the tests (an install step)."""
    cache = Path(os.environ.setdefault(TEST_CACHE_VARIABLE, str(TEST_CACHE)))
    try:
        run(VENV / "bin" / "piccolo-build", "lock", "--fetch-only", cache)
    except subprocess.CalledProcessError:
        sys.exit(f"build.py: cannot fill the tests' download cache {cache} (the error is above)")


def ensure_trixie_root() -> None:
    """``debootstrap --variant=minbase`` a trixie root for the systemd-257 boots (about 35 s, 260 MB)."""
    stamp = TRIXIE_ROOT / ".piccolo-include"
    want = ",".join(TRIXIE_INCLUDE)
    if stamp.is_file() and stamp.read_text() == want:
        return
    if os.geteuid() != 0:
        sys.exit("build.py: the systemd-257 test machine needs root to make (debootstrap)")
    tmp = TRIXIE_ROOT.with_name(TRIXIE_ROOT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(TRIXIE_ROOT, ignore_errors=True)
    run("debootstrap", "--variant=minbase", f"--include={want}", "trixie", tmp)
    (tmp / stamp.name).write_text(want)
    tmp.rename(TRIXIE_ROOT)


def main(argv: list[str]) -> int:
    if argv[:1] == ["test"]:
        apt_install()
        python = ensure_venv("test")
        os.chdir(ROOT)
        fill_test_cache()
        ensure_trixie_root()
        return subprocess.run([str(python), "-m", "pytest", *argv[1:]], check=False).returncode
    ensure_venv("")
    cli = VENV / "bin" / "piccolo-build"
    os.execv(cli, [str(cli), *argv])  # noqa: S606 - replaces this bootstrap process with the CLI


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
