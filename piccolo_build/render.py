"""Rendering: the one Jinja environment, and the atomic, deterministic write of a file tree.

Templates are package data (``piccolo_build/templates/``), so any install finds them. The environment
is strict: an undefined name is an error, nothing is auto-escaped (the quoting filters of
:mod:`piccolo_build.quoting` do it for each target language), trailing newlines are kept, block tags
leave no blank lines.

:func:`write_tree` renders into a temporary directory next to the output, then swaps it with the
output in one step (:mod:`piccolo_build.atomic`). When the new tree equals the old one byte for byte and
mode for mode, nothing is touched (mtimes stay). Files get mode 0644 (or their planned mode),
directories 0755. A symlinked output is rendered into the symlink's target.

The output is replaced whole, so only a directory that is ours is replaced: one that does not exist, is
empty, or holds a previous render. Every render writes its marker file (:data:`OVERLAY_MARKER`, or the
one of another kind of render such as ``monitoring/``'s) at its top, a regular file, not a symlink, to
say so, and nothing else counts: a directory that merely looks like a render may hold a user's files.
Anything else is refused before anything is written.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from piccolo_build.atomic import replace_dir

if TYPE_CHECKING:
    import jinja2

    from piccolo_build.gentoo import OverlayFile

DIR_MODE = 0o755
FILE_MODE = 0o644
MARKER = PurePosixPath(".piccolo-overlay")
MARKER_TEXT = (
    b"Rendered by piccolo-build render: this whole directory is replaced on the next render; do not edit.\n"
)


@dataclass(frozen=True)
class Marker:
    """The file a kind of render leaves at the top of its output to say the directory is its own."""

    path: PurePosixPath
    text: bytes


OVERLAY_MARKER = Marker(MARKER, MARKER_TEXT)

Tree = dict[PurePosixPath, tuple[bytes, int]]


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2

    from piccolo_build.quoting import FILTERS

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("piccolo_build", "templates"),  # package data: works in any install
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


def template_bytes(name: str) -> bytes:
    """A file of the templates directory as it is (a shell script that Jinja must not touch)."""
    source, _filename, _uptodate = environment().loader.get_source(environment(), name)  # type: ignore[union-attr]
    return source.encode()


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


def _validate(files: Iterable[OverlayFile], marker: Marker) -> list[OverlayFile]:
    seen: set[PurePosixPath] = {marker.path}
    out = []
    for f in files:
        if f.path.is_absolute() or ".." in f.path.parts or f.path in seen or not f.path.parts:
            raise ValueError(f"bad or duplicate path in the overlay plan: {f.path}")
        seen.add(f.path)
        out.append(f)
    return out


def tree(files: Iterable[OverlayFile], marker: Marker = OVERLAY_MARKER) -> Tree:
    """What :func:`write_tree` leaves on disk for ``files``: path -> (content, mode), marker included."""
    want = {f.path: (f.content, f.mode) for f in _validate(files, marker)}
    want[marker.path] = (marker.text, FILE_MODE)
    return want


def is_render(output: Path, marker: Marker = OVERLAY_MARKER) -> bool:
    """Whether ``output`` (an existing directory) is ours: it holds ``marker`` as a regular file (a
    symbolic link, a FIFO or a directory of that name does not count, and nothing is opened)."""
    try:
        return stat.S_ISREG((output / marker.path).lstat().st_mode)
    except OSError:
        return False


def claim(output: Path, marker: Marker = OVERLAY_MARKER, *, what: str = "render", hint: str = "") -> Path:
    """The directory to write for ``output`` (a symbolic link is followed: its target is written), once it
    is sure to be ours to replace: missing, empty, or holding ``marker`` (:func:`is_render`). Anything
    else is a :class:`PiccoloError` and nothing is touched: not a directory (a file, a FIFO, a socket), a
    symbolic link loop, a directory that cannot be listed, one that holds anything but our marker.
    ``render``, ``monitoring`` and ``stage`` decide with this one rule."""
    from piccolo_build.errors import PiccoloError

    hint = hint or "render into a new or empty directory, or into the directory of a previous render"
    try:
        target = output.resolve()
    except (OSError, RuntimeError) as e:  # a loop of symbolic links
        raise PiccoloError(f"{output}: cannot be resolved ({e})", hint=hint) from None
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return target
    except OSError as e:
        raise PiccoloError(f"{output}: {e.strerror}", hint=hint) from None
    if not stat.S_ISDIR(mode):
        raise PiccoloError(f"{output}: exists and is not a directory", hint=hint)
    try:
        empty = next(target.iterdir(), None) is None
    except OSError as e:
        raise PiccoloError(f"{output}: cannot list it: {e.strerror}", hint=hint) from None
    if empty or is_render(target, marker):
        return target
    raise PiccoloError(
        f"{output}: not a piccolo-build {what} (no {marker.path}): refusing to replace what it holds",
        hint=hint,
    )


def check_replaceable(output: Path, marker: Marker = OVERLAY_MARKER) -> None:
    """Refuse (a :class:`PiccoloError`, nothing touched) to replace a directory that is not ours."""
    claim(output, marker)


def write_tree(files: Iterable[OverlayFile], output: Path, marker: Marker = OVERLAY_MARKER) -> bool:
    """Make ``output`` hold exactly ``files`` and the marker. Returns False when it already did.

    A symlink is followed: its target is rendered into and the link stays. Raises
    :class:`~piccolo_build.errors.PiccoloError` when ``output`` is not ours to replace.
    """
    want = tree(files, marker)
    output = claim(output, marker)
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
