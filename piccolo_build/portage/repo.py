"""The ebuilds of a checkout's repositories, and the version of a package a board profile would pick.

:class:`Repos` holds the repositories in priority order (coreos-overlay, then its master
portage-stable; a package may be in both, and on an equal version the first wins), and reads a
package's ebuilds on first use. An ebuild is *visible* for an architecture when no ``package.mask``
entry of the profile matches it and its ``KEYWORDS`` hold the stable keyword of that architecture, or a
``package.accept_keywords`` entry accepts one of its keywords. :meth:`Repos.best` is the highest visible
version matching an atom, as portage picks it when nothing else constrains it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from piccolo_build.errors import read_text
from piccolo_build.gentoo import VERSION, Atom, vercmp
from piccolo_build.portage import depstring
from piccolo_build.portage.bash import assignments, inherits, words
from piccolo_build.portage.profile import Profile

TARGET_DEPENDENCIES = ("DEPEND", "RDEPEND", "PDEPEND")  # what lands on the board with a package


@dataclass(frozen=True)
class Ebuild:
    """One ``<name>-<version>.ebuild``, as far as it was read."""

    key: str  # category/name
    version: str
    path: Path
    variables: dict[str, str] = field(compare=False, repr=False)
    eclasses: frozenset[str] = field(compare=False, repr=False)

    @property
    def keywords(self) -> frozenset[str]:
        return frozenset(self.variables.get("KEYWORDS", "").split())

    @property
    def slot(self) -> str:
        return self.variables.get("SLOT", "0").split("/")[0]

    @property
    def python_compat(self) -> tuple[str, ...]:
        return tuple(words(self.variables.get("PYTHON_COMPAT", "")))

    @property
    def crates(self) -> tuple[str, ...]:
        """``CRATES`` of a cargo ebuild (``name@version``), in the order listed."""
        return tuple(self.variables.get("CRATES", "").split())

    @property
    def default_use(self) -> frozenset[str]:
        """The IUSE flags marked ``+`` (on unless a profile says otherwise)."""
        return frozenset(f[1:] for f in self.variables.get("IUSE", "").split() if f.startswith("+"))

    def dependencies(self, profile: Profile, kinds: Iterable[str] = TARGET_DEPENDENCIES) -> list[Atom]:
        """The atoms of the given dependency variables, USE conditionals decided as ``profile`` sets
        the flags for this ebuild (:meth:`Profile.flags`)."""
        on = profile.flags(self.key, self.version, self.slot, self.default_use)
        return [a for kind in kinds for a in depstring.atoms(self.variables.get(kind, ""), on.__contains__)]

    def visible(self, profile: Profile, arch: str) -> bool:
        if any(m.key == self.key and m.matches(self.version, self.slot) for m in profile.package_mask):
            return False
        keywords = self.keywords
        if arch in keywords:
            return True
        return any(
            atom.key == self.key
            and atom.matches(self.version, self.slot)
            and bool(keywords & set(accepted or (f"~{arch}",)))
            for atom, accepted in profile.accepted_keywords
        )


def read_ebuild(key: str, path: Path) -> Ebuild | None:
    """The ebuild at ``path`` of package ``key``; None when its name holds no version."""
    name = key.split("/", 1)[1]
    m = re.fullmatch(rf"{re.escape(name)}-(?P<version>{VERSION})\.ebuild", path.name)
    if m is None:
        return None
    version = m["version"]
    pv = re.sub(r"-r\d+$", "", version)
    text = read_text(path)
    given = {"PN": name, "PV": pv, "P": f"{name}-{pv}", "PVR": version, "CATEGORY": key.split("/", 1)[0]}
    return Ebuild(key, version, path, assignments(text, given), inherits(text))


class Repos:
    """Repositories in priority order; each package's ebuilds are read once, when first asked for."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(roots)
        self._read: dict[str, tuple[Ebuild, ...]] = {}

    def ebuilds(self, key: str) -> tuple[Ebuild, ...]:
        """Every ebuild of ``key``, newest first (a higher-priority repository first on a tie)."""
        if key not in self._read:
            self._read[key] = self._load(key)
        return self._read[key]

    def _load(self, key: str) -> tuple[Ebuild, ...]:
        found: dict[str, Ebuild] = {}
        for root in self.roots:
            directory = root / key
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.ebuild")):
                ebuild = read_ebuild(key, path)
                if ebuild is not None and ebuild.version not in found:
                    found[ebuild.version] = ebuild
        return tuple(sorted(found.values(), key=functools.cmp_to_key(_newer_first)))

    def has(self, key: str) -> bool:
        return bool(self.ebuilds(key))

    def best(
        self, atom: Atom, profile: Profile, arch: str, accept: Callable[[Ebuild], bool] | None = None
    ) -> Ebuild | None:
        """The newest ebuild matching ``atom`` that is visible for ``arch`` (and that ``accept`` takes)."""
        for ebuild in self.ebuilds(atom.key):
            matching = atom.matches(ebuild.version, ebuild.slot) and ebuild.visible(profile, arch)
            if matching and (accept is None or accept(ebuild)):
                return ebuild
        return None


def _newer_first(a: Ebuild, b: Ebuild) -> int:
    return vercmp(b.version, a.version)
