"""Gentoo knowledge in one place: versions, atoms, Manifest lines, PYTHON_COMPAT, overlay paths.

A leaf module (it imports nothing of the project), so every other module can use it:

- the version grammar of the Package Manager Specification (PMS 3.2) and the names of PMS 3.1;
- dependency atoms: the ``category/name`` an atom names, and whether a dependency string lists one;
- thin-Manifest ``DIST`` lines (``metadata/layout.conf`` of Flatcar's repositories says
  ``thin-manifests = true``: a Manifest lists only distfiles, ``DIST <file> <size> BLAKE2B <hex>
  SHA512 <hex>``; coreos-overlay adds ``use-manifests = strict``, so a package with a distfile and no
  Manifest line is an error);
- the default ``PYTHON_COMPAT`` of the ebuilds we render, the PEP 440 <-> Gentoo version mapping of the
  ``pypi`` eclass, and the comparison of Gentoo versions (PMS 3.3) and the parts of an atom;
- where the two repositories live in a flatcar/scripts checkout, and :class:`OverlayFile`, one file of
  the overlay we render.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

# --- PMS names and versions ----------------------------------------------------------------------

VERSION = r"\d+(?:\.\d+)*[a-z]?(?:_(?:alpha|beta|pre|rc|p)\d*)*(?:-r\d+)?"  # PMS 3.2
VERSION_RE = re.compile(VERSION)
CATEGORY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+_.-]*")  # PMS 3.1.1
PACKAGE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+_-]*")  # PMS 3.1.2
LICENSE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+_.-]*")  # PMS 3.1.6
# A package name must not end in something that is a valid version (PMS 3.1.2).
_NAME_ENDS_IN_VERSION = re.compile(rf"-{VERSION}$")
# An atom: blockers, an operator, category/name, a version (with the '=...*' glob), slot and USE deps.
_ATOM = re.compile(
    rf"!{{0,2}}(?:[<>]=?|~|=)?(?P<key>[A-Za-z0-9+_.-]+/[A-Za-z0-9+_-]+?)(?:-{VERSION}\*?)?(?:[:\[].*)?"
)
KEY_RE = re.compile(r"[A-Za-z0-9+_.-]+/[A-Za-z0-9+_-]+")


def name_ends_in_version(name: str) -> bool:
    return _NAME_ENDS_IN_VERSION.search(name) is not None


_VERSION_PARTS = re.compile(
    r"(?P<numbers>\d+(?:\.\d+)*)(?P<letter>[a-z]?)(?P<suffixes>(?:_(?:alpha|beta|pre|rc|p)\d*)*)"
    r"(?:-r(?P<revision>\d+))?"
)
_SUFFIX_ORDER = {"alpha": 0, "beta": 1, "pre": 2, "rc": 3, "p": 5}  # no suffix ranks 4
_NO_SUFFIX = (4, 0)


def _numbers_cmp(a: list[str], b: list[str]) -> int:
    """PMS algorithms 3.2 and 3.3: the first component as an integer, the others as integers unless
    either starts with 0, then as strings with trailing zeros stripped; a longer list is greater."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if i == 0 or not (x.startswith("0") or y.startswith("0")):
            c = (int(x) > int(y)) - (int(x) < int(y))
        else:
            xs, ys = x.rstrip("0"), y.rstrip("0")
            c = (xs > ys) - (xs < ys)
        if c:
            return c
    return (len(a) > len(b)) - (len(a) < len(b))


def vercmp(a: str, b: str) -> int:
    """Compare two Gentoo versions (PMS 3.3): -1, 0 or 1. Raises ``ValueError`` for a non-version."""
    ma, mb = _VERSION_PARTS.fullmatch(a), _VERSION_PARTS.fullmatch(b)
    if ma is None or mb is None:
        raise ValueError(f"not a Gentoo version: {a if ma is None else b!r}")
    c = _numbers_cmp(ma["numbers"].split("."), mb["numbers"].split("."))
    if c:
        return c
    la, lb = ma["letter"], mb["letter"]
    if la != lb:
        return 1 if la > lb else -1

    def suffixes(m: re.Match[str]) -> list[tuple[int, int]]:
        found = re.findall(r"_(alpha|beta|pre|rc|p)(\d*)", m["suffixes"])
        return [(_SUFFIX_ORDER[k], int(n or 0)) for k, n in found]

    sa, sb = suffixes(ma), suffixes(mb)
    for i in range(max(len(sa), len(sb))):
        x = sa[i] if i < len(sa) else _NO_SUFFIX
        y = sb[i] if i < len(sb) else _NO_SUFFIX
        if x != y:
            return 1 if x > y else -1
    ra, rb = int(ma["revision"] or 0), int(mb["revision"] or 0)
    return (ra > rb) - (ra < rb)


def without_revision(version: str) -> str:
    return re.sub(r"-r\d+$", "", version)


@dataclass(frozen=True)
class Atom:
    """A dependency atom as far as resolving it needs: ``>=dev-python/cffi-1.0.0:0[x]``."""

    key: str  # category/name
    op: str = ""  # "", "<", "<=", "=", ">=", ">", "~"
    version: str = ""
    glob: bool = False  # =cat/pkg-1.2*
    slot: str = ""  # what follows ':' up to '[' ("3.12", "0/535", "=")
    blocker: bool = False

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[1]

    def matches(self, version: str, slot: str = "") -> bool:
        """Whether an ebuild of this package at ``version`` (in ``slot``) satisfies the atom."""
        wanted_slot = self.slot.split("/", 1)[0].rstrip("=*")
        if wanted_slot and slot and wanted_slot != slot.split("/", 1)[0]:
            return False
        if not self.op:
            return True
        if self.glob:
            return version == self.version or version.startswith(self.version)
        if self.op == "~":
            return vercmp(without_revision(version), without_revision(self.version)) == 0
        c = vercmp(version, self.version)
        return {"<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">": c > 0}[self.op]


_ATOM_PARTS = re.compile(
    rf"(?P<blocker>!{{0,2}})(?P<op>[<>]=?|~|=)?(?P<key>[A-Za-z0-9+_.-]+/[A-Za-z0-9+_-]+?)"
    rf"(?:-(?P<version>{VERSION})(?P<glob>\*)?)?(?::(?P<slot>[^\[]*))?(?:\[.*\])?"
)


def parse_atom(text: str) -> Atom:
    """``>=dev-python/cffi-1.0.0[${PYTHON_USEDEP}]`` -> Atom; raises ``ValueError`` for anything else."""
    m = _ATOM_PARTS.fullmatch(text.strip())
    if m is None or bool(m["op"]) != bool(m["version"]):
        raise ValueError(f"not a dependency atom: {text!r}")
    return Atom(
        key=m["key"],
        op=m["op"] or "",
        version=m["version"] or "",
        glob=bool(m["glob"]),
        slot=m["slot"] or "",
        blocker=bool(m["blocker"]),
    )


def atom_key(atom: str) -> str:
    """``>=dev-python/requests-2.26.0:0[ssl]`` -> ``dev-python/requests``."""
    m = _ATOM.fullmatch(atom.strip())
    if m is None:
        raise ValueError(f"not a dependency atom: {atom!r}")
    return m.group("key")


def atom_name(atom: str) -> str:
    """``>=dev-python/requests-2.26.0`` -> ``requests``."""
    return atom_key(atom).split("/", 1)[1]


def listed(depstring: str, key: str) -> bool:
    """Whether the dependency string names the package ``key`` (any version, slot or condition)."""
    for token in depstring.split():
        m = _ATOM.fullmatch(token)
        if m and m.group("key") == key:
            return True
    return False


# --- Manifest ------------------------------------------------------------------------------------


def dist_line(name: str, size: int, blake2b: str, sha512: str) -> str:
    """A thin-Manifest line: ``DIST <file> <size> BLAKE2B <hex> SHA512 <hex>``."""
    if not name or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"not a distfile name: {name!r}")
    return f"DIST {name} {size} BLAKE2B {blake2b} SHA512 {sha512}"


def manifest_line(name: str, data: bytes) -> str:
    """The ``DIST`` line of the distfile ``name`` whose bytes are ``data``."""
    return dist_line(name, len(data), hashlib.blake2b(data).hexdigest(), hashlib.sha512(data).hexdigest())


# --- Python --------------------------------------------------------------------------------------

# PYTHON_COMPAT of every ebuild we render when there is no checkout to read it from (the committed
# overlays/, `render` without a tree): the Python of stable-4593 and later. The build renders for the
# checkout's own targets instead (TreeFacts.python_compat: stable-4230 builds python3_11). One value, not
# a range: a second target that the tag masks makes pkgcheck find the dependencies unsolvable for it
# (NonsolvableDeps: dev-lang/python:3.13 or :3.11). Each entry must be an implementation the tree's
# python-utils-r1 eclass knows (an unknown one dies "Invalid implementation in PYTHON_COMPAT").
PYTHON_COMPAT = "python3_12"


def python_targets(compat: str = PYTHON_COMPAT) -> tuple[str, ...]:
    """``python3_{12..13}`` -> (python3_12, python3_13), as bash brace expansion gives it."""
    prefix, _, rng = compat.partition("{")
    if not rng:
        return (compat,)
    lo, _, hi = rng.rstrip("}").partition("..")
    return tuple(f"{prefix}{n}" for n in range(int(lo), int(hi) + 1))


def normalise(name: str) -> str:
    """PEP 503 normalised project name, which is also the Gentoo package name."""
    return re.sub(r"[-_.]+", "-", name).lower()


_PEP440_FINAL = re.compile(r"(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\.post(\d+))?")
_PEP440_SUFFIX = {"a": "_alpha", "b": "_beta", "rc": "_rc"}


def gentoo_version(pep440: str) -> str:
    """PEP 440 final/pre/post release -> Gentoo version (the inverse of the pypi eclass's translation).
    Raises ``ValueError`` for what has no Gentoo equivalent (dev releases, local versions)."""
    m = _PEP440_FINAL.fullmatch(pep440)
    if m is None:
        raise ValueError(f"version {pep440!r} has no Gentoo equivalent")
    out = m.group(1)
    if m.group(2):
        out += _PEP440_SUFFIX[m.group(2)] + m.group(3)
    if m.group(4):
        out += f"_p{m.group(4)}"
    return out


def pep440_version(gentoo: str) -> str:
    """Gentoo PV -> PEP 440, as the ``pypi`` eclass does it (``_rc1`` -> ``rc1``, ``_p1`` -> ``.post1``)."""
    out = gentoo
    for suffix, pep in (("_alpha", "a"), ("_beta", "b"), ("_pre", ".dev"), ("_rc", "rc"), ("_p", ".post")):
        out = out.replace(suffix, pep)
    return out


# --- repositories and the overlay we render --------------------------------------------------------

# In a flatcar/scripts checkout (run_sdk_container mounts sdk_container/ at /mnt/host/source).
THIRD_PARTY = PurePosixPath("sdk_container/src/third_party")
COREOS_OVERLAY = THIRD_PARTY / "coreos-overlay"
PORTAGE_STABLE = THIRD_PARTY / "portage-stable"
# The top directory of our rendered packages (``render``'s output holds ``coreos-overlay/<cat>/<pkg>``).
OVERLAY = PurePosixPath("coreos-overlay")
# Per-package bashrc files (``<category>/<name>``) that coreos-overlay's profile.bashrc sources
# (``CROS_ADDONS_TREE/config/env``); not a package category, and placed file by file.
ENV_DIR = OVERLAY / "coreos" / "config" / "env"


@dataclass(frozen=True)
class OverlayFile:
    """One file of the rendered overlay: its path under the render's output, bytes and mode."""

    path: PurePosixPath
    content: bytes
    mode: int = 0o644


def package_key(file: OverlayFile) -> str | None:
    """``category/name`` of the package a rendered file belongs to (None outside a package directory
    of ``coreos-overlay``, e.g. a file under :data:`ENV_DIR`)."""
    parts = file.path.parts
    if file.path.is_relative_to(ENV_DIR.parent):
        return None
    return f"{parts[1]}/{parts[2]}" if len(parts) > 3 and parts[0] == OVERLAY.name else None
