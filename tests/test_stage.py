"""``piccolo-build stage DIR``: the base image's files and the piccolod sysext tree, from the layout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from piccolo_build import layout
from tests.builder_helpers import cli

BASE_FILES = {
    "usr/lib/systemd/system/update-engine.service.d/10-piccolod-dependency.conf",
    "usr/lib/systemd/system/piccolod-guard.service",
    "usr/lib/systemd/system/piccolod-start.service",
    "usr/lib/systemd/system/multi-user.target.wants/piccolod-start.service",
    "usr/lib/piccolod/piccolod-guard",
    "usr/lib/piccolod/piccolod-start",
}
SYSEXT_FILES = {
    "usr/lib/systemd/system/piccolod.service",
    "usr/lib/systemd/system/multi-user.target.wants/piccolod.service",
    "usr/lib/tmpfiles.d/piccolod.conf",
    "usr/lib/piccolod/health-policy.yaml",
    "usr/lib/extension-release.d/extension-release.piccolod",
    "usr/bin/piccolod",
}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_stage_lays_out_what_the_ebuilds_install(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    r = cli("stage", out, "--python", "/opt/py/bin/python3", "--pythonpath", "/srv/agent", "--env", "A=b c")
    assert r.returncode == 0, r.stderr
    assert tree(out / "base") == BASE_FILES
    assert tree(out / "sysext") == SYSEXT_FILES
    for e in layout.LAYOUT:  # every layout entry, in the tree of its package, with its mode
        path = out / str(e.package) / e.dest.relative_to("/")
        if e.how is layout.How.ENABLE:
            assert path.is_symlink() and str(path.readlink()) == f"../{e.dest.name}"
        else:
            assert path.stat().st_mode & 0o777 == e.mode, e.dest
    release = (out / "sysext/usr/lib/extension-release.d/extension-release.piccolod").read_text()
    assert release == "ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n"
    launcher = (out / "sysext/usr/bin/piccolod").read_text()
    assert "export A='b c'\n" in launcher and "export PYTHONPATH='/srv/agent'\n" in launcher
    assert launcher.endswith("exec '/opt/py/bin/python3' -m piccolod \"$@\"\n")
    overlay = Path(__file__).resolve().parents[1] / "overlays/coreos-overlay/coreos-base/piccolo-base/files"
    assert (out / "base/usr/lib/piccolod/piccolod-guard").read_bytes() == (
        overlay / "piccolod-guard.sh"
    ).read_bytes()


def test_stage_makes_a_sysext_image_systemd_accepts(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    r = cli("stage", out, "--raw", "--version-id", "4593.2.5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sysext"] == str(out / "sysext")
    image = out / "piccolod.raw"
    assert image.read_bytes()[:4] == b"hsqs"  # squashfs
    listing = subprocess.run(
        ["unsquashfs", "-l", "-d", "", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "/usr/lib/extension-release.d/extension-release.piccolod" in listing
    assert "/usr/lib/systemd/system/piccolod.service" in listing
    release = (out / "sysext/usr/lib/extension-release.d/extension-release.piccolod").read_text()
    assert "VERSION_ID=4593.2.5\n" in release and "SYSEXT_LEVEL" not in release


def test_stage_replaces_only_its_own_directory(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    r = cli("stage", mine)
    assert r.returncode == 2 and "not a piccolo-build stage" in r.stderr
    assert (mine / "notes.txt").read_text() == "mine\n"
    out = tmp_path / "stage"
    assert cli("stage", out).returncode == 0
    (out / "base" / "stale").write_text("x")
    assert cli("stage", out).returncode == 0  # an earlier stage is replaced whole
    assert not (out / "base" / "stale").exists()
    bad = cli("stage", tmp_path / "x", "--env", "no-equals-sign")
    assert bad.returncode == 2 and "expected NAME=VALUE" in bad.stderr


HOSTILE = ("marker-symlink", "marker-fifo", "marker-directory", "output-fifo", "output-file", "symlink-loop",
           "output-symlink-to-foreign")  # fmt: skip


def _hostile(tmp_path: Path, kind: str, marker: str) -> tuple[Path, Path | None]:
    """An output directory ``render`` or ``stage`` must refuse, and a file of the user's that must stay."""
    out = tmp_path / "out"
    keep: Path | None = None
    if kind.startswith("marker-") or kind == "output-symlink-to-foreign":
        target = tmp_path / "user"
        target.mkdir()
        keep = target / "precious"
        keep.write_text("mine\n")
        if kind == "marker-symlink":
            (target / marker).symlink_to(tmp_path / "elsewhere")
            (tmp_path / "elsewhere").write_text("a marker somewhere else\n")
        elif kind == "marker-fifo":
            os.mkfifo(target / marker)
        elif kind == "marker-directory":
            (target / marker).mkdir()
        if kind == "output-symlink-to-foreign":
            out.symlink_to(target)
        else:
            out = target
    elif kind == "output-fifo":
        os.mkfifo(out)
    elif kind == "output-file":
        out.write_text("a file\n")
    else:
        out.symlink_to(tmp_path / "loop2")
        (tmp_path / "loop2").symlink_to(out)
    return out, keep


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("command", ["stage", "render"])
def test_stage_and_render_claim_their_directory_by_one_rule(tmp_path: Path, command: str, kind: str) -> None:
    """Issue 13: ``stage`` deleted a user's files through a symlinked ``.piccolo-stage``, gave a traceback
    on a symlink loop and hung on a FIFO. Both commands now refuse the same way: one line, exit 2, in
    bounded time, nothing touched."""
    marker = ".piccolo-stage" if command == "stage" else ".piccolo-overlay"
    out, keep = _hostile(tmp_path, kind, marker)
    args = ("stage", out) if command == "stage" else ("render", "-o", out)
    r = cli(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 2  # the error and its hint
    if keep is not None:
        assert keep.read_text() == "mine\n" and sorted(p.name for p in keep.parent.iterdir())[0] != "base"
