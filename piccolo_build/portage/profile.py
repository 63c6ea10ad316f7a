"""A board profile of a flatcar/scripts checkout, stacked as portage stacks it (PMS 5, portage's
``profile-formats = portage-2`` that both repositories declare).

The stack of ``coreos/<arch>/generic`` is read depth first through each directory's ``parent`` file,
parents before children; a parent line is a path relative to the directory, or ``<repo>:<path>``
(``:<path>``: the same repository) under that repository's ``profiles/``. Of each directory it reads:

- ``make.defaults``: ``USE`` and ``PYTHON_TARGETS`` (a ``USE_EXPAND`` variable, expanded to
  ``python_targets_*`` flags), both incremental (``-flag`` turns a flag off, ``-*`` clears);
- ``package.use`` (``atom flag -flag ...``), applied after USE to the packages it names;
- ``use.mask`` and ``use.stable.mask`` (our ebuilds have stable keywords), ``-flag`` unmasks;
- ``package.mask`` (``-atom`` unmasks), after each repository's own ``profiles/package.mask`` (which
  applies to every profile), and ``package.accept_keywords`` (``atom [keyword...]``; no keyword means
  ``~arch``).

A file may also be a directory of files, read in name order. Everything is read once, when the
profile is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from piccolo_build.errors import PiccoloError, read_text
from piccolo_build.gentoo import Atom, parse_atom
from piccolo_build.portage.bash import assignments

PYTHON_FLAG = "python_targets_"
MAX_DEPTH = 64  # parent chains are a dozen deep; a loop is an error, not a hang


@dataclass(frozen=True)
class Layer:
    repo: str
    path: Path

    def lines(self, name: str) -> Iterator[str]:
        """The non-comment, non-empty lines of ``name`` (a file, or a directory of files)."""
        target = self.path / name
        files = sorted(p for p in target.iterdir() if p.is_file()) if target.is_dir() else [target]
        for f in files:
            if not f.is_file():
                continue
            for raw in read_text(f).splitlines():
                line = raw.split("#", 1)[0].strip()
                if line:
                    yield line


def _apply(state: dict[str, bool], flags: list[str], prefix: str = "") -> None:
    """Incremental flags onto ``state`` (flag -> on/off); ``-*`` turns off every flag with ``prefix``."""
    for word in flags:
        if word == "-*":
            for flag in state:
                if flag.startswith(prefix):
                    state[flag] = False
        elif word.startswith("-"):
            state[prefix + word[1:]] = False
        else:
            state[prefix + word] = True


def _atoms(lines: Iterator[str]) -> Iterator[tuple[Atom, list[str]]]:
    for line in lines:
        first, *rest = line.split()
        try:
            yield parse_atom(first), rest
        except ValueError:
            continue


@dataclass(frozen=True)
class Profile:
    """One board profile's stack, and what the build reads from it."""

    name: str  # e.g. coreos/amd64/generic
    layers: tuple[Layer, ...]  # parents first
    use: Mapping[str, bool]  # USE after stacking (PYTHON_TARGETS expanded): flag -> on/off
    package_use: tuple[tuple[Atom, tuple[str, ...]], ...]
    use_mask: frozenset[str]
    package_mask: tuple[Atom, ...]
    accepted_keywords: tuple[tuple[Atom, tuple[str, ...]], ...]

    def python_targets(self) -> tuple[str, ...]:
        """The ``PYTHON_TARGETS`` the profile enables and does not mask, e.g. ``("python3_12",)``."""
        live = {f for f, on in self.use.items() if on and f not in self.use_mask}
        return tuple(sorted(f.removeprefix(PYTHON_FLAG) for f in live if f.startswith(PYTHON_FLAG)))

    def flags(self, key: str, version: str, slot: str, defaults: frozenset[str]) -> frozenset[str]:
        """The USE flags on for one ebuild: its IUSE defaults, the profile's USE, then package.use;
        masked flags are off."""
        state = dict.fromkeys(defaults, True)
        state.update(self.use)
        for atom, flags in self.package_use:
            if atom.key == key and atom.matches(version, slot):
                _apply(state, list(flags))
        return frozenset(f for f, on in state.items() if on and f not in self.use_mask)


def load_profile(repos: Mapping[str, Path], repo: str, name: str) -> Profile:
    """The stack of profile ``name`` of repository ``repo`` (``repos``: repository name -> path)."""
    layers: list[Layer] = []
    seen: set[Path] = set()

    def visit(repo_name: str, path: Path, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise PiccoloError(f"{path}: profile parents nest deeper than {MAX_DEPTH} (a loop?)")
        if not path.is_dir():
            raise PiccoloError(f"{path}: no such profile directory")
        parent_file = path / "parent"
        if parent_file.is_file():
            for line in read_text(parent_file).splitlines():
                entry = line.split("#", 1)[0].strip()
                if not entry:
                    continue
                where, sep, rel = entry.partition(":")
                if sep:
                    target_repo = where or repo_name
                    if target_repo not in repos:
                        raise PiccoloError(f"{parent_file}: unknown repository {target_repo!r}")
                    visit(target_repo, (repos[target_repo] / "profiles" / rel).resolve(), depth + 1)
                else:
                    visit(repo_name, (path / entry).resolve(), depth + 1)
        if path not in seen:
            seen.add(path)
            layers.append(Layer(repo_name, path))

    visit(repo, (repos[repo] / "profiles" / name).resolve(), 0)
    globals_ = [Layer(n, (p / "profiles").resolve()) for n, p in repos.items()]

    use: dict[str, bool] = {}
    env: dict[str, str] = {}
    masked: dict[str, bool] = {}
    package_mask: dict[str, Atom] = {}
    package_use: list[tuple[Atom, tuple[str, ...]]] = []
    accepted: list[tuple[Atom, tuple[str, ...]]] = []
    for layer in globals_:
        _mask_packages(package_mask, layer)
    for layer in layers:
        defaults = layer.path / "make.defaults"
        if defaults.is_file():
            values = assignments(read_text(defaults), env)
            env.update(values)
            _apply(use, values.get("PYTHON_TARGETS", "").split(), PYTHON_FLAG)
            _apply(use, values.get("USE", "").split())
        for mask_file in ("use.mask", "use.stable.mask"):
            _apply(masked, list(layer.lines(mask_file)))
        _mask_packages(package_mask, layer)
        package_use += [(a, tuple(t)) for a, t in _atoms(layer.lines("package.use"))]
        accepted += [(a, tuple(t)) for a, t in _atoms(layer.lines("package.accept_keywords"))]
    return Profile(
        name=name,
        layers=tuple(layers),
        use=use,
        package_use=tuple(package_use),
        use_mask=frozenset(f for f, on in masked.items() if on),
        package_mask=tuple(package_mask.values()),
        accepted_keywords=tuple(accepted),
    )


def _mask_packages(entries: dict[str, Atom], layer: Layer) -> None:
    for line in layer.lines("package.mask"):
        if line.startswith("-"):
            entries.pop(line[1:], None)
            continue
        try:
            entries[line] = parse_atom(line)
        except ValueError:
            continue
