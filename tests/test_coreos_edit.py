"""The coreos-base/coreos RDEPEND edit: adds once, bumps the revision symlink, refuses a file it cannot edit.

It is tried on the real coreos-0.0.1.ebuild of every tag of the real trees, and, for the corner cases,
on a stand-in with the real file's shape (several RDEPEND assignments: a plain one,
``RDEPEND="${RDEPEND} ..."`` blocks with USE conditionals, ``RDEPEND+=``, comments between, and a
commented-out assignment), written for this test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from piccolo_build.coreos import EBUILD, add_rdepend
from piccolo_build.errors import PiccoloError
from piccolo_build.gentoo import COREOS_OVERLAY, listed
from tests.fixtures.flatcar import TAGS, FlatcarTrees

ATOM = "coreos-base/piccolo-base"

# A stand-in for coreos-base/coreos/coreos-0.0.1.ebuild with the real file's shape (written for the
# tests): a plain RDEPEND, ``RDEPEND="${RDEPEND} ..."`` blocks with USE conditionals, ``RDEPEND+=``,
# comments between, and a commented-out assignment that must not count.
STAND_IN = """\
# Test stand-in, shaped like Flatcar's coreos-base/coreos meta-package.

EAPI=7

DESCRIPTION="Meta package for the test"
HOMEPAGE="https://example.invalid"

LICENSE="GPL-2"
SLOT="0"
KEYWORDS="amd64 arm64"
IUSE="selinux"

# A commented-out assignment does not count:
# RDEPEND="coreos-base/piccolo-base"

RDEPEND=">=sys-apps/baselayout-3.0.0"

RDEPEND="${RDEPEND}
\tsys-apps/dbus[selinux?]
\tsys-apps/systemd[selinux?]
\t"

RDEPEND="${RDEPEND}
\tamd64? (
\t\tapp-emulation/xenstore
\t)"

# Tools for the image.
RDEPEND="${RDEPEND}
\tapp-admin/sudo
\tapp-arch/zstd
\tsys-libs/glibc
"

RDEPEND+="
\tamd64? (
\t\tsys-auth/google-oslogin
\t)
"

RDEPEND="${RDEPEND}
\tacct-group/man

\tacct-user/man
"
"""


def _snapshot(d: Path) -> dict[str, tuple[str, bytes]]:
    out = {}
    for p in sorted(d.iterdir()):
        out[p.name] = ("link", str(p.readlink()).encode()) if p.is_symlink() else ("file", p.read_bytes())
    return out


def rdepend_of(ebuild: Path) -> list[str]:
    """RDEPEND as bash sees it after sourcing the ebuild."""
    r = subprocess.run(
        ["bash", "-c", f'source "{ebuild}" && printf "%s\\n" $RDEPEND'],
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout.split()


@pytest.fixture
def coreos(tmp_path: Path) -> Path:
    d = tmp_path / "coreos-base" / "coreos"
    d.mkdir(parents=True)
    (d / EBUILD).write_text(STAND_IN)
    (d / "coreos-0.0.1-r320.ebuild").symlink_to(EBUILD)
    (d / "metadata.xml").write_text("<pkgmetadata/>\n")
    return d


def test_adds_the_atom_and_bumps_the_revision(coreos: Path) -> None:
    before = rdepend_of(coreos / EBUILD)
    assert ATOM not in before
    assert add_rdepend(coreos, ATOM) is True
    after = rdepend_of(coreos / EBUILD)
    assert after == [*before, ATOM], "bash must see exactly one new dependency, at the end"
    names = sorted(p.name for p in coreos.iterdir())
    assert names == ["coreos-0.0.1-r321.ebuild", EBUILD, "metadata.xml"]
    assert (coreos / "coreos-0.0.1-r321.ebuild").readlink() == Path(EBUILD)
    text = (coreos / EBUILD).read_text()
    assert text.startswith(STAND_IN.rstrip("\n"))
    assert text.endswith(f'\n\n# Piccolo OS: added by piccolo-build\nRDEPEND+="\n\t{ATOM}\n"\n')
    assert subprocess.run(["bash", "-n", str(coreos / EBUILD)], check=False).returncode == 0


@pytest.mark.parametrize("tag", TAGS)
def test_the_real_ebuild_of_every_tag(flatcar: FlatcarTrees, tmp_path: Path, tag: str) -> None:
    real = flatcar.tree(tag) / COREOS_OVERLAY / "coreos-base" / "coreos"
    d = tmp_path / "coreos"
    shutil.copytree(real, d, symlinks=True)
    (old,) = d.glob("coreos-0.0.1-r*.ebuild")
    number = int(old.name.removeprefix("coreos-0.0.1-r").removesuffix(".ebuild"))
    before = rdepend_of(d / EBUILD)
    assert len(before) > 20 and ATOM not in before
    assert add_rdepend(d, ATOM) is True
    assert rdepend_of(d / EBUILD) == [*before, ATOM]
    assert sorted(p.name for p in d.iterdir()) == [
        f"coreos-0.0.1-r{number + 1}.ebuild",
        EBUILD,
        "metadata.xml",
    ]
    assert (d / f"coreos-0.0.1-r{number + 1}.ebuild").readlink() == Path(EBUILD)
    assert (d / EBUILD).read_text().startswith((real / EBUILD).read_text().rstrip("\n"))
    assert add_rdepend(d, ATOM) is False


def test_second_run_changes_nothing(coreos: Path) -> None:
    assert add_rdepend(coreos, ATOM) is True
    first = _snapshot(coreos)
    mtime = (coreos / EBUILD).stat().st_mtime_ns
    assert add_rdepend(coreos, ATOM) is False
    assert _snapshot(coreos) == first
    assert (coreos / EBUILD).stat().st_mtime_ns == mtime


def test_already_listed_with_a_version_counts(coreos: Path) -> None:
    text = STAND_IN.replace("\tapp-admin/sudo\n", f"\tapp-admin/sudo\n\t>={ATOM}-0.1.0:0\n")
    (coreos / EBUILD).write_text(text)
    before = _snapshot(coreos)
    assert add_rdepend(coreos, ATOM) is False
    assert _snapshot(coreos) == before


def test_missing_revision_symlink_gets_r1(coreos: Path) -> None:
    (coreos / "coreos-0.0.1-r320.ebuild").unlink()
    assert add_rdepend(coreos, ATOM) is True
    assert (coreos / "coreos-0.0.1-r1.ebuild").readlink() == Path(EBUILD)


def test_no_rdepend_is_an_error_and_nothing_changes(coreos: Path) -> None:
    text = 'EAPI=7\nDESCRIPTION="x"\nDEPEND="sys-libs/glibc"\n# RDEPEND is assigned elsewhere\n'
    (coreos / EBUILD).write_text(text)
    before = _snapshot(coreos)
    with pytest.raises(PiccoloError) as exc:
        add_rdepend(coreos, ATOM)
    assert exc.value.message == (
        f'{coreos / EBUILD}:4: RDEPEND: no RDEPEND="..." assignment found, cannot add {ATOM}'
    )
    assert _snapshot(coreos) == before


def test_missing_ebuild_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PiccoloError, match="cannot read"):
        add_rdepend(tmp_path, ATOM)


def test_unexpected_revisions_are_errors(coreos: Path) -> None:
    (coreos / "coreos-0.0.1-r7.ebuild").symlink_to(EBUILD)
    before = _snapshot(coreos)
    with pytest.raises(PiccoloError, match="more than one revision"):
        add_rdepend(coreos, ATOM)
    assert _snapshot(coreos) == before
    for p in coreos.glob("coreos-0.0.1-r*.ebuild"):
        p.unlink()
    (coreos / "coreos-0.0.1-r3.ebuild").write_text("a copy, not a symlink\n")
    with pytest.raises(PiccoloError, match="expected a symlink"):
        add_rdepend(coreos, ATOM)


def test_bad_atom_is_refused(coreos: Path) -> None:
    for bad in (">=coreos-base/piccolo-base-1", "piccolo-base", 'a/b"; rm -rf /; "'):
        with pytest.raises(PiccoloError, match="category/name"):
            add_rdepend(coreos, bad)


def test_listed_understands_atom_syntax() -> None:
    assert listed(">=sys-apps/baselayout-3.0.0", "sys-apps/baselayout")
    assert listed("sys-apps/dbus[selinux?]", "sys-apps/dbus")
    assert listed("=a/foo-2fa-1.0-r2", "a/foo-2fa")
    assert listed("a/b:0/1", "a/b")
    assert not listed("app-admin/etcd-wrapper", "app-admin/etcd")
    assert not listed("${RDEPEND} amd64? ( x/y )", "a/b")
