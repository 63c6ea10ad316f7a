"""tpm2-pytss 2.3.0 built as the Flatcar SDK builds it from alpha-4790 on, with GCC 15 (default C23).

The machine is the Debian testing root ``build.py test`` makes with debootstrap (``.venv/gcc15-root``:
gcc-15, Debian's cffi and pycparser 3.0, and trixie's libtss2-dev 4.1.3, the TSS every Flatcar tag
ships). The locked sdist from the tests' download cache is unpacked, patched with exactly the files
the rendered ebuild's ``PATCHES`` names (``patch -p1``, as eapply does), and built with ``setup.py
build``, the setuptools path distutils-r1 takes, with ``CC=gcc-15`` (what distutils-r1 exports:
the board's compiler) and GCC 15's ``cpp`` first on PATH (the SDK's). With the patch it builds, imports
and reads PCR 0 of a real swtpm through the agent's own TPM probe; without it, the same build fails where
GCC 15's stddef.h reaches pycparser.

Each build takes 15-20 s on two idle cores: its outcome (exit code, log, and the built tree) is cached
in ``$PICCOLO_TEST_CACHE/gcc15/`` under a digest of everything that goes in (the sdist, the patches, the
root's package list, the build script), so it runs again only when one of them changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from piccolo_build.config import load_config
from piccolo_build.overlay import overlay_files
from tests.builder_helpers import DEFAULT_CONFIG, ROOT
from tests.fixtures.daemons import Swtpm
from tests.test_lock import CACHE_VARIABLE, DEFAULT_CACHE

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

GCC15_ROOT = ROOT / ".venv" / "gcc15-root"  # made by build.py's ensure_gcc15_root()
SDIST = "tpm2-pytss-2.3.0.tar.gz"
PACKAGE = "dev-python/tpm2-pytss"
PROBE = ROOT / "piccolod" / "checks" / "tpm_probe.py"
# Inside the root: the work directory and the swtpm's directory are bound here (both exist there).
WORK, TPM = "/mnt", "/srv"

# Runs inside the root, in /mnt: unpack, apply the patches in order, build as distutils-r1 would.
BUILD = """set -e
cd /mnt
mkdir -p bin src
ln -sf /usr/bin/cpp-15 bin/cpp
tar -xzf {sdist} -C src
cd src/tpm2-pytss-2.3.0
for p in $(cat /mnt/patches/series); do patch -p1 -f -g0 --no-backup-if-mismatch <"/mnt/patches/$p"; done
export PATH=/mnt/bin:$PATH CC=gcc-15 SETUPTOOLS_SCM_PRETEND_VERSION=2.3.0 PYTHONDONTWRITEBYTECODE=1
exec python3 setup.py build --build-lib /mnt/out
"""


@dataclass(frozen=True)
class Build:
    returncode: int
    log: str
    out: Path  # the built package tree (tpm2_pytss/ and its extension module)


def gcc15_root() -> Path:
    if not (GCC15_ROOT / "usr" / "bin" / "gcc-15").exists():  # loud, never a skip
        pytest.fail(f"{GCC15_ROOT} missing: `python3 build.py test` makes it (debootstrap)", pytrace=False)
    return GCC15_ROOT


def ebuild_patches() -> list[tuple[str, bytes]]:
    """The patches the rendered tpm2-pytss ebuild applies, in its PATCHES order, with their bytes."""
    files = {str(f.path): f.content for f in overlay_files(load_config(DEFAULT_CONFIG))}
    (ebuild,) = (
        text
        for path, text in files.items()
        if path.startswith(f"coreos-overlay/{PACKAGE}/") and path.endswith(".ebuild")
    )
    block = re.search(r"^PATCHES=\(\n(?P<body>.*?)^\)", ebuild.decode(), re.M | re.S)
    assert block is not None, "the tpm2-pytss ebuild applies no patches"
    names = re.findall(r'"\$\{FILESDIR\}/([^"]+)"', block["body"])
    return [(name, files[f"coreos-overlay/{PACKAGE}/files/{name}"]) for name in names]


def in_root(
    root: Path, binds: dict[str, Path], script: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` chrooted into ``root``, with ``binds`` (path in the root -> host directory)
    mounted in a private mount namespace, so the shared root stays as it was."""
    mounts = "".join(f'mount --bind "{src}" "{root}{dest}" && ' for dest, src in binds.items())
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{mounts}exec chroot "{root}" sh -c "$0"',
            script,
        ],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def build(sdist: Path, patches: list[tuple[str, bytes]]) -> Build:
    """The build of ``sdist`` with ``patches`` in the GCC 15 root, from the cache when it ran before."""
    root = gcc15_root()
    h = hashlib.sha256(sdist.read_bytes())
    for name, content in patches:
        h.update(name.encode() + b"\0" + content)
    h.update((root / ".piccolo-include").read_bytes() + BUILD.encode())
    cache = Path(os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE) / "gcc15" / h.hexdigest()[:32]
    if (cache / "result.json").is_file():
        result = json.loads((cache / "result.json").read_text())
        return Build(result["returncode"], result["log"], cache / "out")
    cache.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gcc15-", dir=cache.parent))
    try:
        (work / "patches").mkdir()
        for name, content in patches:
            (work / "patches" / name).write_bytes(content)
        (work / "patches" / "series").write_text("".join(f"{name}\n" for name, _ in patches))
        shutil.copyfile(sdist, work / SDIST)
        r = in_root(root, {WORK: work}, BUILD.format(sdist=SDIST))
        shutil.rmtree(work / "src")
        (work / "result.json").write_text(
            json.dumps({"returncode": r.returncode, "log": r.stdout + r.stderr})
        )
        work.rename(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = json.loads((cache / "result.json").read_text())
    return Build(result["returncode"], result["log"], cache / "out")


@pytest.fixture(scope="module")
def sdist(locked_distfiles: Path) -> Path:
    return locked_distfiles / SDIST


def test_the_ebuild_applies_our_preprocessor_patch() -> None:
    patches = ebuild_patches()
    assert [name for name, _ in patches] == ["tpm2-pytss-2.3.0-preprocess-with-cc-c99.patch"]
    text = patches[0][1].decode()
    assert '+        return cc[0], cc[1:] + ["-E", "-std=c99"]' in text
    assert 'os.environ.get("CC")' in text


def test_with_the_patch_gcc_15_builds_it_and_it_reads_a_pcr_from_swtpm(
    sdist: Path, fresh_swtpm: Swtpm
) -> None:
    result = build(sdist, ebuild_patches())
    assert result.returncode == 0, result.log[-3000:]
    assert "generated _type_map with" in result.log
    (extension,) = result.out.glob("tpm2_pytss/_libtpm2_pytss*.so")
    assert extension.is_file()
    # The agent's own TPM probe, run by path as the agent runs it, with the package built above.
    with tempfile.TemporaryDirectory(prefix="gcc15-run-") as tmp:
        shutil.copytree(result.out, Path(tmp) / "out")
        shutil.copyfile(PROBE, Path(tmp) / "tpm_probe.py")
        r = in_root(
            gcc15_root(),
            {WORK: Path(tmp), TPM: fresh_swtpm.root},
            f"PYTHONPATH={WORK}/out exec python3 {WORK}/tpm_probe.py swtpm:path={TPM}/sock 20",
            timeout=60,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    reading = json.loads(r.stdout)
    assert reading["family"] == "2.0"
    assert re.fullmatch(r"[0-9a-f]{64}", reading["pcr0_sha256"]), reading


def test_without_the_patch_the_same_build_fails_on_gcc_15s_c23_headers(sdist: Path) -> None:
    result = build(sdist, [])
    assert result.returncode != 0
    last = result.log.strip().splitlines()[-1]
    assert last.startswith("pycparser.c_parser.ParseError: /usr/lib/gcc/x86_64-linux-gnu/15/include/stddef.h")
    assert last.endswith("before: nullptr_t"), last
