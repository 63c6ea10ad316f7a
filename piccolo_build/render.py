"""Rendering: the one Jinja environment, and the atomic, deterministic write of a file tree.

Templates live in the repository's ``templates/`` directory (found relative to this package, so an
installed copy works as long as it sits beside the checkout). The environment is strict: an undefined
name is an error, nothing is auto-escaped (the quoting filters of :mod:`piccolo_build.quoting` do it for
each target language), trailing newlines are kept, block tags leave no blank lines.

:func:`write_tree` renders into a temporary directory next to the output, then swaps it with the
output in one step (:mod:`piccolo_build.atomic`). When the new tree equals the old one byte for byte and
mode for mode, nothing is touched (mtimes stay). Files get mode 0644 (or their planned mode),
directories 0755. A symlinked output is rendered into the symlink's target.

The output is replaced whole, so only a directory that is ours is replaced: one that does not exist, is
empty, or holds a previous render. Every render writes the marker file :data:`MARKER` at its top to say
so; a render from before the marker counts when every entry in it lies in a directory the plan writes.
Anything else is refused before anything is written.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from piccolo_build.atomic import replace_dir

if TYPE_CHECKING:
    import jinja2

    from piccolo_build.gentoo import OverlayFile

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DIR_MODE = 0o755
FILE_MODE = 0o644
MARKER = PurePosixPath(".piccolo-overlay")
MARKER_TEXT = (
    b"Rendered by piccolo-build render: this whole directory is replaced on the next render; do not edit.\n"
)

Tree = dict[PurePosixPath, tuple[bytes, int]]


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2

    from piccolo_build.quoting import FILTERS

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - no HTML here; values are quoted per language by filters
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def render_template(name: str, ctx: Mapping[str, Any]) -> bytes:
    return environment().get_template(name).render(**ctx).encode()


def read_tree(root: Path) -> Tree:
    """Every regular file under ``root``: relative path -> (content, permission bits)."""
    out: Tree = {}
    if not root.is_dir():
        return out
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = PurePosixPath(path.relative_to(root).as_posix())
            out[rel] = (path.read_bytes(), stat.S_IMODE(path.lstat().st_mode))
    return out


def _dir_modes_ok(root: Path) -> bool:
    return (
        all(
            stat.S_IMODE((Path(d) / s).lstat().st_mode) == DIR_MODE
            for d, subs, _ in os.walk(root)
            for s in subs
        )
        and stat.S_IMODE(root.stat().st_mode) == DIR_MODE
    )


def _validate(files: Iterable[OverlayFile]) -> list[OverlayFile]:
    seen: set[PurePosixPath] = {MARKER}
    out = []
    for f in files:
        if f.path.is_absolute() or ".." in f.path.parts or f.path in seen or not f.path.parts:
            raise ValueError(f"bad or duplicate path in the overlay plan: {f.path}")
        seen.add(f.path)
        out.append(f)
    return out


def tree(files: Iterable[OverlayFile]) -> Tree:
    """What :func:`write_tree` leaves on disk for ``files``: path -> (content, mode), marker included."""
    want = {f.path: (f.content, f.mode) for f in _validate(files)}
    want[MARKER] = (MARKER_TEXT, FILE_MODE)
    return want


def _is_previous_render(output: Path, want: Tree) -> bool:
    """Whether replacing ``output`` (an existing directory) can only remove what a render wrote."""
    marker = output / MARKER
    if marker.is_file() and not marker.is_symlink():
        return True
    # A render from before the marker: every entry is planned or lies in a directory the plan writes.
    dirs = {parent for path in want for parent in path.parents if parent.parts}
    for dirpath, subdirs, names in os.walk(output):
        rel = PurePosixPath(Path(dirpath).relative_to(output).as_posix())
        for name in (*subdirs, *names):
            entry = rel / name
            if entry not in want and entry not in dirs and entry.parent not in dirs:
                return False
    return True


def check_replaceable(output: Path, want: Tree) -> None:
    """Refuse (a :class:`PiccoloError`, nothing touched) to replace a directory that is not ours."""
    from piccolo_build.errors import PiccoloError

    hint = "render into a new or empty directory, or into the directory of a previous render"
    if not output.exists():
        return
    if not output.is_dir():
        raise PiccoloError(f"{output}: exists and is not a directory", hint=hint)
    if next(output.iterdir(), None) is None or _is_previous_render(output, want):
        return
    raise PiccoloError(
        f"{output}: not a piccolo-build render (no {MARKER}): refusing to replace what it holds", hint=hint
    )


def write_tree(files: Iterable[OverlayFile], output: Path) -> bool:
    """Make ``output`` hold exactly ``files`` and the marker. Returns False when it already did.

    A symlink is followed: its target is rendered into and the link stays. Raises
    :class:`~piccolo_build.errors.PiccoloError` when ``output`` is not ours to replace.
    """
    want = tree(files)
    output = output.resolve()
    check_replaceable(output, want)
    if output.is_dir() and read_tree(output) == want and _dir_modes_ok(output):
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        tmp.chmod(DIR_MODE)
        for rel, (content, mode) in sorted(want.items()):
            path = tmp.joinpath(*rel.parts)
            for parent in reversed(rel.parents[:-1]):
                d = tmp.joinpath(*parent.parts)
                if not d.exists():
                    d.mkdir()
                    d.chmod(DIR_MODE)
            path.write_bytes(content)
            path.chmod(mode)
        replace_dir(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return True
