"""What our packages need from a checkout's repositories, read from the tree (docs/flatcar.md).

Three questions, answered with :mod:`piccolo_build.portage` for every board architecture:

- :func:`unresolved`: which dependency atoms of our ``dev-python`` ebuilds (the lock's, and what
  :data:`~piccolo_build.deps.TWEAKS` adds) have no visible ebuild with stable keywords at this tag,
  and, for Python packages, none built for the board's Python targets; plus the interpreter itself;
- :func:`published`: the packages Flatcar itself builds for the board and so publishes as binary
  packages: the closure of ``coreos-devel/board-packages`` (the image, the developer image, docker,
  containerd, the boot loaders), of build_image's default ``--base_sysexts`` and of Flatcar's extra
  sysexts (``build_library/extra_sysexts.sh``), following ``DEPEND``/``RDEPEND``/``PDEPEND`` of the
  best visible version with USE conditionals as the ebuild defaults them;
- :func:`compiles`: the packages of the piccolod sysext that ``sysext-packages`` compiles from source
  (ours, and every dependency Flatcar does not publish), each with what its build needs from the SDK:
  Rust (``inherit cargo``: a visible ``dev-lang/rust`` or ``rust-bin`` at least ``RUST_MIN_VER``) and
  its crates (``CRATES``, each a ``DIST`` line of the package's Manifest, fetched by the SDK), or the
  maturin build backend.

The closure is conservative where it cannot be exact: the profiles' ``package.use`` and the
dependencies an eclass adds (``${PYTHON_DEPS}``) are not evaluated, so a package can only be
reported as compiled when Flatcar in fact publishes it, never the other way round for what the
packages name themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from piccolo_build.gentoo import THIRD_PARTY, Atom, parse_atom, vercmp
from piccolo_build.lock import Lock
from piccolo_build.portage.profile import Profile, load_profile
from piccolo_build.portage.repo import Ebuild, Repos
from piccolo_build.tree import TreeFacts, repositories

BOARD_PACKAGES = "coreos-devel/board-packages"
RUST = ("dev-lang/rust", "dev-lang/rust-bin")
MATURIN = "dev-util/maturin"


@dataclass(frozen=True)
class TreeView:
    """A checkout's repositories and board profiles, read once per question set."""

    scripts_dir: Path
    facts: TreeFacts
    repos: Repos
    profiles: dict[str, Profile]  # arch -> coreos/<arch>/generic

    @property
    def arches(self) -> tuple[str, ...]:
        return tuple(self.profiles)

    def best(self, atom: Atom, arch: str | None = None) -> Ebuild | None:
        """The best visible ebuild for ``arch`` (default: the first board's)."""
        arch = arch or self.arches[0]
        python = self.facts.python_targets
        if atom.key.startswith("dev-python/"):
            return self.repos.best(atom, self.profiles[arch], arch, lambda e: _builds_for(e, python))
        return self.repos.best(atom, self.profiles[arch], arch)


def view(scripts_dir: Path, facts: TreeFacts, arches: Sequence[str]) -> TreeView:
    repos = repositories(scripts_dir)
    profiles = {a: load_profile(repos, "coreos-overlay", f"coreos/{a}/generic") for a in arches}
    return TreeView(scripts_dir, facts, Repos(list(repos.values())), profiles)


def _builds_for(ebuild: Ebuild, targets: Iterable[str]) -> bool:
    """A Python package that is not built for any target the board enables cannot be installed."""
    compat = ebuild.python_compat
    return not compat or bool(set(compat) & set(targets))


def python_atom(facts: TreeFacts) -> Atom:
    """The interpreter of the board's Python target: python3_12 -> ``=dev-lang/python-3.12*``."""
    target = facts.python_targets[0] if facts.python_targets else "python3_12"
    return parse_atom(f"=dev-lang/python-{target.removeprefix('python').replace('_', '.')}*")


def our_dependencies(lock: Lock, *, build: bool = True) -> dict[str, list[Atom]]:
    """Each of our ``dev-python`` packages -> the atoms its ebuild names: at run time (the lock's
    runtime dependencies and the libraries the tweaks link), and with ``build`` also what its build
    runs in the SDK (the lock's build requirements, the tweaks' tools)."""
    from piccolo_build.deps import TWEAKS, Tweak

    out: dict[str, list[Atom]] = {}
    for pkg in lock.packages:
        tweak = TWEAKS.get(pkg.name, Tweak())
        names = [*pkg.rdepend, *tweak.depend]
        if build:
            names += [*pkg.bdepend, *tweak.bdepend, *tweak.python_bdepend]
        out[pkg.atom] = [parse_atom(a) for a in names]
    return out


def unresolved(tree: TreeView, lock: Lock) -> list[str]:
    """What our packages name (and the board's interpreter) that resolves at no board, one phrase per
    group of packages needed by the same of ours: ``dev-python/cffi, dev-python/pycparser (needed by
    dev-python/tpm2-pytss)``."""
    ours = {p.atom for p in lock.packages}
    needers: dict[str, set[str]] = {}
    atoms: dict[str, list[Atom]] = {}
    for pkg, deps in our_dependencies(lock).items():
        for atom in deps:
            if atom.key not in ours:
                needers.setdefault(atom.key, set()).add(pkg)
                atoms.setdefault(atom.key, []).append(atom)
    python = python_atom(tree.facts)
    missing: dict[str, set[str]] = {}
    for arch in tree.arches:
        if tree.best(python, arch) is None:
            missing.setdefault(f"{_spelled(python)} (the board's Python)", set())
        for key, wanted in atoms.items():
            if any(tree.best(a, arch) is None for a in wanted):
                missing.setdefault(key, set()).update(needers[key])
    groups: dict[str, list[str]] = {}
    for key, by in sorted(missing.items()):
        groups.setdefault(", ".join(sorted(by)), []).append(key)
    return [f"{', '.join(keys)}" + (f" (needed by {by})" if by else "") for by, keys in groups.items()]


def _spelled(atom: Atom) -> str:
    if not atom.op:
        return atom.key
    return f"{atom.op}{atom.key}-{atom.version}{'*' if atom.glob else ''}"


def _sysext_entry_packages(entry: str, separator: str) -> list[str]:
    """``name|pkg&pkg`` (base sysexts) or ``name|pkg,pkg|USE|arch`` (extra sysexts) -> the packages."""
    fields = entry.split(separator)
    if len(fields) < 2:
        return []
    return [p for p in fields[1].replace("&", ",").split(",") if p]


def published(tree: TreeView) -> frozenset[str]:
    """``category/name`` of every package Flatcar builds for the first board (see the module doc)."""
    roots: list[Atom] = [parse_atom(BOARD_PACKAGES)]
    sep = tree.facts.sysext_separator or "|"
    for entry in tree.facts.default_base_sysexts:
        roots += [parse_atom(p) for p in _sysext_entry_packages(entry, sep)]
    for entry in tree.facts.extra_sysexts:
        extra_sep = "|" if "|" in entry else ":"
        roots += [parse_atom(p) for p in _sysext_entry_packages(entry, extra_sep)]
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        atom = todo.pop()
        if atom.key in seen:
            continue
        seen.add(atom.key)
        ebuild = tree.best(atom)
        if ebuild is not None:
            todo.extend(ebuild.dependencies(tree.profiles[tree.arches[0]]))
    return frozenset(seen)


@dataclass(frozen=True)
class Compile:
    """One package ``sysext-packages`` compiles from source."""

    package: str  # category/name
    version: str
    origin: str  # "ours" (the rendered overlay) or the repository path it comes from
    needs: tuple[str, ...] = ()  # what its build takes from the SDK, one phrase each
    problems: tuple[str, ...] = ()  # what the tree lacks for it
    rust: str = ""  # the Rust package-version of the tree it builds with (a cargo ebuild)
    crates: int = 0  # how many crates it fetches as distfiles

    def brief(self) -> str:
        """``cryptography 46.0.2 (Rust 1.89.0, 36 crates)``."""
        extra = ", ".join(
            x for x in (self.rust and f"Rust {self.rust}", self.crates and f"{self.crates} crates") if x
        )
        return f"{self.package.split('/')[1]} {self.version}" + (f" ({extra})" if extra else "")

    def to_json(self) -> dict[str, object]:
        return {
            "package": self.package,
            "version": self.version,
            "origin": self.origin,
            "needs": list(self.needs),
            "problems": list(self.problems),
            "rust": self.rust,
            "crates": self.crates,
        }


def compiles(
    tree: TreeView, lock: Lock, sysext_packages: Sequence[str], agent: tuple[str, str]
) -> list[Compile]:
    """What ``sysext-packages`` compiles at this tree, in walk order: for the board, every package of
    the sysext's run-time closure that Flatcar does not publish (our packages always); then our
    packages only its builds need, which compile for the SDK. ``agent``: its atom and version."""
    from piccolo_build.overlay import python_dependencies

    flatcar = published(tree)
    runtime = our_dependencies(lock, build=False)
    by_atom = {p.atom: p for p in lock.packages}
    profile = tree.profiles[tree.arches[0]]
    out: list[Compile] = []
    seen: set[str] = set()
    todo = [python_atom(tree.facts) if p == "dev-lang/python" else parse_atom(p) for p in sysext_packages]
    while todo:
        atom = todo.pop(0)
        if atom.key in seen:
            continue
        seen.add(atom.key)
        if atom.key == agent[0]:
            out.append(Compile(agent[0], agent[1], "ours", ("the agent's sdist in DISTDIR",)))
            todo += [parse_atom(a) for a in python_dependencies(lock.agent)]
        elif atom.key in by_atom:
            pkg = by_atom[atom.key]
            out.append(Compile(atom.key, pkg.gentoo_version, "ours", _our_needs(pkg.name)))
            todo += runtime[atom.key]
        elif atom.key not in flatcar:
            ebuild = tree.best(atom)
            if ebuild is None:
                out.append(Compile(atom.key, "?", "nowhere", problems=("no visible ebuild at this tag",)))
                continue
            origin = str(ebuild.path.parent.parent.parent.relative_to(tree.scripts_dir / THIRD_PARTY))
            out.append(_compile(tree, ebuild, origin))
            todo += ebuild.dependencies(profile)
    for pkg in lock.packages:
        if pkg.atom not in seen:
            out.append(Compile(pkg.atom, pkg.gentoo_version, "ours, for the SDK", _our_needs(pkg.name)))
    return out


def _our_needs(name: str) -> tuple[str, ...]:
    from piccolo_build.deps import TWEAKS, Tweak

    tweak = TWEAKS.get(name, Tweak())
    needs = ["its locked sdist in DISTDIR"]
    if tweak.depend:
        needs.append("the board's " + ", ".join(tweak.depend))
    if tweak.ext:
        needs.append("the board's C compiler and pkg-config (a C extension)")
    if tweak.patches:
        needs.append("applies " + ", ".join(tweak.patches))
    return tuple(needs)


def _compile(tree: TreeView, ebuild: Ebuild, origin: str) -> Compile:
    """What building ``ebuild`` takes from the SDK, and what of that the tree lacks."""
    needs: list[str] = []
    problems: list[str] = []
    rust_version, crate_count = "", 0
    if "cargo" in ebuild.eclasses:
        minimum = ebuild.variables.get("RUST_MIN_VER", "")
        rust = _newest(tree, RUST)
        wanted = f"Rust >= {minimum}" if minimum else "Rust"
        if rust is None:
            problems.append(f"{wanted}: no visible dev-lang/rust or rust-bin")
        elif minimum and vercmp(rust.version.split("-r")[0], minimum) < 0:
            problems.append(f"{wanted}: newest visible is {rust.key}-{rust.version}")
        else:
            needs.append(f"{wanted} ({rust.key}-{rust.version})")
            rust_version = rust.version.split("-r")[0]
        crates = ebuild.crates
        if crates:
            listed = _manifest_files(ebuild.path.parent / "Manifest")
            absent = [c for c in crates if _crate_file(c) not in listed]
            if absent:
                problems.append(f"{len(absent)} of {len(crates)} crates not in its Manifest: {absent[0]}...")
            else:
                needs.append(f"{len(crates)} crates (all in its Manifest; fetched as distfiles)")
                crate_count = len(crates)
    if ebuild.variables.get("DISTUTILS_USE_PEP517") == "maturin":
        maturin = tree.best(parse_atom(MATURIN))
        if maturin is None:
            problems.append("the maturin build backend: no visible dev-util/maturin")
        else:
            needs.append(f"the maturin build backend ({maturin.key}-{maturin.version})")
    if ebuild.variables.get("DISTUTILS_EXT"):
        needs.append("the board's C compiler")
    return Compile(
        ebuild.key, ebuild.version, origin, tuple(needs), tuple(problems), rust_version, crate_count
    )


def _newest(tree: TreeView, keys: Iterable[str]) -> Ebuild | None:
    found = [e for k in keys if (e := tree.best(parse_atom(k))) is not None]
    if not found:
        return None
    best = found[0]
    for e in found[1:]:
        if vercmp(e.version, best.version) > 0:
            best = e
    return best


def _crate_file(crate: str) -> str:
    name, sep, version = crate.partition("@")
    return f"{name}-{version}.crate" if sep else f"{crate}.crate"


def _manifest_files(manifest: Path) -> frozenset[str]:
    from piccolo_build.errors import read_text

    if not manifest.is_file():
        return frozenset()
    return frozenset(
        parts[1] for line in read_text(manifest).splitlines() if (parts := line.split())[:1] == ["DIST"]
    )
