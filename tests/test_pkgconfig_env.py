"""The board's pkg-config reaches tpm2-pytss's cffi build at every tag: our per-package bashrc file
(``coreos/config/env/dev-python/tpm2-pytss``) with each tag's real profile.bashrc, toolchain-funcs and
distutils-r1 eclasses.

Each tag's checkout is mounted where the SDK container has it (``/mnt/host/source``, the path
profile.bashrc names) through an overlay in a private mount namespace, the rendered file is put where
the build's overlay step puts it, and bash then does what portage does for the ebuild, as far as these
files need: it sources the tag's ``eclass/distutils-r1.eclass`` (and what it inherits) and
``profiles/coreos/base/profile.bashrc``, runs ``pre_src_compile`` (the stacked ``cros_pre_src_compile_*``
hooks) and runs, through ``distutils-r1_run_phase`` (the environment of ``python_compile``), the locked
``pkgconfig`` module asking for ``tss2-esys`` as tpm2-pytss's build does. Two stand-ins on PATH record
which pkg-config it ran: ``x86_64-cros-linux-gnu-pkg-config`` (the board's: it has the TSS) and
``pkg-config`` (the SDK's: it has not, which is "Require tss2-esapi to be installed").
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from piccolo_build.config import load_config
from piccolo_build.gentoo import ENV_DIR
from piccolo_build.overlay import overlay_files
from tests.builder_helpers import DEFAULT_CONFIG
from tests.fixtures.flatcar import TAGS, FlatcarTrees

pytestmark = pytest.mark.privileged  # a private mount namespace (unshare, overlayfs)

BOARD = "x86_64-cros-linux-gnu"
SYSROOT = "/build/amd64-usr"
# distutils-r1 exports PKG_CONFIG itself from beta-4757 on.
ECLASS_EXPORTS = {"lts-4081.3.10": False, "stable-4230.2.3": False, "stable-4593.2.5": False}

STAND_IN = """#!/bin/sh
echo "{name} SYSROOT=${{SYSROOT:-}}" >>"$PROBE_LOG"
exit {code}
"""

# Inside the namespace: the checkout's sdk_container at /mnt/host/source (an overlay, so the shared tree
# stays untouched), our file where the overlay step puts it, then the ebuild environment.
HARNESS = r"""#!/bin/bash
set -u
checkout=$1 env_file=$2 pkgconfig=$3
work=$(mktemp -d)
mount -t tmpfs tmpfs /mnt || exit 90
mkdir -p /mnt/host/source "$work/upper" "$work/work"
mount -t overlay overlay -o "lowerdir=$checkout/sdk_container,upperdir=$work/upper,workdir=$work/work" \
	/mnt/host/source || exit 91
if [ -n "$env_file" ]; then
	install -D -m 0644 "$env_file" "/mnt/host/source/src/third_party/$ENV_REL/dev-python/tpm2-pytss" ||
		exit 92
fi
set +u
third=/mnt/host/source/src/third_party
# What portage sets for a cross build of the board's package (SYSROOT and ROOT not exported).
EAPI=8 CATEGORY=dev-python PN=tpm2-pytss PV=2.3.0 PR=r0 P=tpm2-pytss-2.3.0 PF=tpm2-pytss-2.3.0
CHOST=BOARD_CHOST CBUILD=x86_64-pc-linux-gnu SYSROOT=BOARD_SYSROOT ESYSROOT=BOARD_SYSROOT
ROOT=BOARD_SYSROOT/ EPREFIX= BROOT= WORKDIR=$work T=$work S=$work
unset PKG_CONFIG
die() { echo "die: $*" >&2; exit 1; }
debug-print() { :; }; debug-print-function() { :; }; debug-print-section() { :; }
einfo() { :; }; ewarn() { :; }; eerror() { :; }; elog() { :; }; ebegin() { :; }; eend() { :; }
eqawarn() { :; }
has() { local x=$1; shift; [[ " $* " == *" $x "* ]]; }
use() { return 1; }; usex() { if use "$1"; then echo "${2-yes}"; else echo "${3-no}"; fi; }
in_iuse() { return 1; }; has_version() { return 1; }; EXPORT_FUNCTIONS() { :; }
inherit() {
	local e
	for e; do
		has "$e" $INHERITED && continue
		INHERITED+=" $e"
		source "$third/portage-stable/eclass/$e.eclass" || die "inherit $e"
	done
}
# The ebuild's own settings (overlays/coreos-overlay/dev-python/tpm2-pytss).
DISTUTILS_USE_PEP517=setuptools DISTUTILS_EXT=1 PYTHON_COMPAT=(python3_11 python3_12)
inherit distutils-r1
. "$third/coreos-overlay/profiles/coreos/base/profile.bashrc"
probe() {
	PYTHONPATH=$pkgconfig python3 -c '
import os
import pkgconfig
print("PKG_CONFIG=" + os.environ.get("PKG_CONFIG", ""), "tss2-esys=" + str(pkgconfig.exists("tss2-esys")))'
}
pre_src_compile
BUILD_DIR=$work/build _DISTUTILS_INITIAL_CWD=$work
distutils-r1_run_phase probe
""".replace("BOARD_CHOST", BOARD).replace("BOARD_SYSROOT", SYSROOT)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, locked_distfiles: Path) -> Path:
    """The harness, the two pkg-config stand-ins, the locked pkgconfig module and our rendered file."""
    root = tmp_path_factory.mktemp("pkgconfig-env")
    (root / "bin").mkdir()
    for name, code in ((f"{BOARD}-pkg-config", 0), ("pkg-config", 1)):
        path = root / "bin" / name
        path.write_text(STAND_IN.format(name=name, code=code))
        path.chmod(0o755)
    (root / "harness").write_text(HARNESS)
    with tarfile.open(locked_distfiles / "pkgconfig-1.6.0.tar.gz") as tar:
        tar.extractall(root / "src", filter="data")
    (env,) = (f for f in overlay_files(load_config(DEFAULT_CONFIG)) if f.path.is_relative_to(ENV_DIR))
    assert env.path == ENV_DIR / "dev-python" / "tpm2-pytss"
    (root / "tpm2-pytss.env").write_bytes(env.content)
    return root


def _build_env(rig: Path, tree: Path, with_file: bool) -> tuple[str, str]:
    """What the extension's build saw (PKG_CONFIG and whether tss2-esys was found), and which
    pkg-config ran with which SYSROOT."""
    log = rig / "probe.log"
    log.write_text("")
    env_file = str(rig / "tpm2-pytss.env") if with_file else ""
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            str(rig / "harness"),
            str(tree),
            env_file,
            str(rig / "src" / "pkgconfig-1.6.0" / "src"),
        ],
        env={"PATH": f"{rig / 'bin'}:/usr/bin:/bin", "PROBE_LOG": str(log), "ENV_REL": str(ENV_DIR)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().splitlines()[-1], log.read_text().strip()


@pytest.mark.parametrize("tag", TAGS)
def test_the_cffi_build_runs_the_boards_pkg_config_with_the_board_sysroot(
    flatcar: FlatcarTrees, rig: Path, tag: str
) -> None:
    tree = flatcar.tree(tag)
    seen, ran = _build_env(rig, tree, with_file=True)
    assert seen == f"PKG_CONFIG={BOARD}-pkg-config tss2-esys=True"
    assert ran == f"{BOARD}-pkg-config SYSROOT={SYSROOT}"
    # Without our file: up to stable-4593 the eclass leaves PKG_CONFIG unset and the SDK's pkg-config
    # answers (the build fails); from beta-4757 on the eclass exports the board's, without SYSROOT.
    seen, ran = _build_env(rig, tree, with_file=False)
    if ECLASS_EXPORTS.get(tag, True):
        assert (seen, ran) == (
            f"PKG_CONFIG={BOARD}-pkg-config tss2-esys=True",
            f"{BOARD}-pkg-config SYSROOT=",
        )
    else:
        assert (seen, ran) == ("PKG_CONFIG= tss2-esys=False", "pkg-config SYSROOT=")
