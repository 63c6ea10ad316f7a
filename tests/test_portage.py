"""``piccolo_build.portage`` and the Gentoo versions and atoms of ``piccolo_build.gentoo``: what the
verdict on a tree is read with, checked on small cases whose answers PMS and portage give."""

from __future__ import annotations

from pathlib import Path

import pytest

from piccolo_build.errors import PiccoloError
from piccolo_build.gentoo import parse_atom, vercmp
from piccolo_build.portage.bash import assignments, brace_expand, inherits, ver_cut, words
from piccolo_build.portage.depstring import atoms
from piccolo_build.portage.profile import load_profile
from piccolo_build.portage.repo import Repos


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.2.3", "1.2.10", -1),  # numeric, not string order
        ("1.0", "1.0.0", -1),  # a longer version is greater
        ("1.01", "1.1", -1),  # leading zero: string comparison after the first component
        ("1.1", "1.10", -1),
        ("1.0a", "1.0", 1),
        ("1.0_alpha1", "1.0_beta", -1),
        ("1.0_rc2", "1.0", -1),
        ("1.0", "1.0_p1", -1),
        ("1.0-r1", "1.0", 1),
        ("3.12.11_p1", "3.12.12", -1),
        ("46.0.2", "46.0.2", 0),
    ],
)
def test_vercmp_follows_pms(a: str, b: str, expected: int) -> None:
    assert vercmp(a, b) == expected
    assert vercmp(b, a) == -expected


def test_atoms_and_what_they_match() -> None:
    atom = parse_atom(">=dev-python/cffi-1.0.0[${PYTHON_USEDEP}]")
    assert (atom.key, atom.op, atom.version) == ("dev-python/cffi", ">=", "1.0.0")
    assert atom.matches("2.0.0") and not atom.matches("0.9")
    glob = parse_atom("=dev-lang/python-3.12*")
    assert glob.matches("3.12.11_p1") and not glob.matches("3.11.9")
    assert parse_atom("~dev-lang/rust-1.80.1").matches("1.80.1-r101")
    slotted = parse_atom("x11-drivers/nvidia-drivers:0/535")
    assert slotted.slot == "0/535" and slotted.matches("535.1", "0") and not slotted.matches("1", "1")
    assert parse_atom("!!app-misc/foo").blocker
    assert parse_atom("app-crypt/tpm2-tss:=").key == "app-crypt/tpm2-tss"
    for bad in (">=dev-python/cffi", "not an atom", "cffi", "a/name-1"):
        with pytest.raises(ValueError, match="not a dependency atom"):
            parse_atom(bad)


def test_bash_assignments_as_ebuilds_write_them() -> None:
    text = """
PYTHON_TESTED=( python3_{11..13} pypy3_11 )
PYTHON_COMPAT=( "${PYTHON_TESTED[@]}" python3_{13,14}t )
PYVER=$(ver_cut 1-2)
SLOT="${PYVER}"
DEPEND="dev-libs/a"
RDEPEND="${DEPEND}
	$(python_gen_cond_dep '
		dev-python/b[${PYTHON_USEDEP}]
	' "${PYTHON_TESTED[@]}")
"
if [[ ${PV} == 9999 ]]; then
	inherit git-r3
else
	KEYWORDS="~amd64"
	KEYWORDS+=" arm64"
fi
inherit cargo distutils-r1
"""
    got = assignments(text, {"PV": "3.12.11_p1"})
    assert words(got["PYTHON_COMPAT"]) == [
        "python3_11", "python3_12", "python3_13", "pypy3_11", "python3_13t", "python3_14t",
    ]  # fmt: skip
    assert got["SLOT"] == "3.12"
    assert got["KEYWORDS"] == "~amd64 arm64"
    assert "dev-libs/a" in got["RDEPEND"] and "dev-python/b" in got["RDEPEND"]
    assert inherits(text) == {"git-r3", "cargo", "distutils-r1"}
    assert ver_cut("3.12.11_p1", 3, None) == "11_p1"
    assert brace_expand("x{1..2}y{a,b}") == ["x1ya", "x1yb", "x2ya", "x2yb"]


def test_dependency_strings_decide_use_conditionals_and_any_of() -> None:
    depstring = """
	a/plain
	!!a/blocked
	foo? ( a/with-foo )
	!foo? ( a/without-foo )
	|| ( a/first a/second )
	|| ( ( a/grouped-one a/grouped-two ) a/other )
	$(python_gen_cond_dep 'a/python-dep[${PYTHON_USEDEP}]' 'python*')
	${PYTHON_DEPS}
	"""
    on = [a.key for a in atoms(depstring, lambda f: f == "foo")]
    off = [a.key for a in atoms(depstring, lambda _f: False)]
    common = ["a/first", "a/grouped-one", "a/grouped-two", "a/python-dep"]
    assert on == ["a/plain", "a/with-foo", *common]
    assert off == ["a/plain", "a/without-foo", *common]


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_profile_stack_across_two_repositories(tmp_path: Path) -> None:
    master, overlay = tmp_path / "master", tmp_path / "overlay"
    _write(master, "profiles/base/make.defaults", 'PYTHON_TARGETS="python3_13"\nUSE="ssl"\n')
    _write(master, "profiles/package.mask", ">=dev-lang/python-3.14\n")
    _write(overlay, "profiles/coreos/base/parent", "master:base\n")
    _write(
        overlay, "profiles/coreos/base/make.defaults", 'PYTHON_TARGETS="-python3_13 python3_12 python3_11"\n'
    )
    _write(overlay, "profiles/coreos/base/use.mask", "python_targets_python3_11\n")
    _write(overlay, "profiles/coreos/base/package.use", "app-misc/tool extra\n")
    _write(overlay, "profiles/coreos/base/package.accept_keywords", "=dev-lang/rust-1.80.1\n")
    _write(overlay, "profiles/coreos/amd64/generic/parent", ":coreos/base\n")
    repos = {"overlay": overlay, "master": master}
    profile = load_profile(repos, "overlay", "coreos/amd64/generic")
    assert profile.python_targets() == ("python3_12",)
    assert profile.flags("app-misc/tool", "1", "0", frozenset({"docs"})) == {
        "docs", "extra", "ssl", "python_targets_python3_12",
    }  # fmt: skip
    _write(master, "dev-lang/python/python-3.12.1.ebuild", 'KEYWORDS="amd64"\nSLOT="3.12"\n')
    _write(master, "dev-lang/python/python-3.14.0.ebuild", 'KEYWORDS="amd64"\nSLOT="3.14"\n')
    _write(master, "dev-lang/rust/rust-1.80.1.ebuild", 'KEYWORDS="~amd64"\n')
    _write(master, "dev-lang/rust/rust-1.79.0.ebuild", 'KEYWORDS="arm64 ~amd64"\n')
    _write(master, "dev-lang/rust/rust-1.81.0.ebuild", 'KEYWORDS="~amd64"\n')
    repo = Repos([overlay, master])
    best = repo.best(parse_atom("dev-lang/python"), profile, "amd64")
    assert best is not None and best.version == "3.12.1"  # 3.14 is masked
    rust = repo.best(parse_atom("dev-lang/rust"), profile, "amd64")
    assert rust is not None and rust.version == "1.80.1"  # only that ~amd64 version is accepted
    # An entry without keywords accepts ~arch: 1.80.1 has no ~arm64, so arm64 gets the stable 1.79.0.
    arm = repo.best(parse_atom("dev-lang/rust"), profile, "arm64")
    assert arm is not None and arm.version == "1.79.0"


def test_a_profile_that_loops_or_names_nothing_is_one_line(tmp_path: Path) -> None:
    _write(tmp_path, "profiles/a/parent", "../b\n")
    _write(tmp_path, "profiles/b/parent", "../a\n")
    with pytest.raises(PiccoloError, match="profile parents nest deeper than 64"):
        load_profile({"r": tmp_path}, "r", "a")
    _write(tmp_path, "profiles/c/parent", "other:base\n")
    with pytest.raises(PiccoloError, match="unknown repository 'other'"):
        load_profile({"r": tmp_path}, "r", "c")
    with pytest.raises(PiccoloError, match="no such profile directory"):
        load_profile({"r": tmp_path}, "r", "missing")
