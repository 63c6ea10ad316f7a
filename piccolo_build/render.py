"""Rendering: the one Jinja environment, and the atomic, deterministic write of a file tree.

Templates live in the repository's ``templates/`` directory (found relative to this package, so an
installed copy works as long as it sits beside the checkout). The environment is strict: an undefined
name is an error, nothing is auto-escaped (the quoting filters of :mod:`piccolo_build.quoting` do it for
each target language), trailing newlines are kept, block tags leave no blank lines.

:func:`write_tree` renders into a temporary directory next to the output, then swaps it with the
output in one step (``renameat2(RENAME_EXCHANGE)``; a plain rename when there is no output yet). When
the new tree equals the old one byte for byte and mode for mode, nothing is touched (mtimes stay).
Files get mode 0644 (or their planned mode), directories 0755.
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

if TYPE_CHECKING:
    import jinja2

    from piccolo_build.overlay import OverlayFile

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DIR_MODE = 0o755


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


def read_tree(root: Path) -> dict[PurePosixPath, tuple[bytes, int]]:
    """Every regular file under ``root``: relative path -> (content, permission bits)."""
    out: dict[PurePosixPath, tuple[bytes, int]] = {}
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
    seen: set[PurePosixPath] = set()
    out = []
    for f in files:
        if f.path.is_absolute() or ".." in f.path.parts or f.path in seen or not f.path.parts:
            raise ValueError(f"bad or duplicate path in the overlay plan: {f.path}")
        seen.add(f.path)
        out.append(f)
    return out


def write_tree(files: Iterable[OverlayFile], output: Path) -> bool:
    """Make ``output`` hold exactly ``files``. Returns False when it already did (nothing written)."""
    planned = _validate(files)
    want = {f.path: (f.content, f.mode) for f in planned}
    if output.is_dir() and read_tree(output) == want and _dir_modes_ok(output):
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        tmp.chmod(DIR_MODE)
        for f in planned:
            path = tmp.joinpath(*f.path.parts)
            for parent in reversed(path.relative_to(tmp).parents[:-1]):
                d = tmp / parent
                if not d.exists():
                    d.mkdir()
                    d.chmod(DIR_MODE)
            path.write_bytes(f.content)
            path.chmod(f.mode)
        _swap(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0)


def _swap(new: Path, output: Path) -> None:
    """Replace ``output`` by ``new``: one rename, or one atomic exchange when ``output`` exists."""
    if not output.exists():
        new.rename(output)
        return
    if _exchange(new, output):
        shutil.rmtree(new)  # now holds the previous tree
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
    old.rmdir()
    output.rename(old)
    try:
        new.rename(output)
    except OSError:
        old.rename(output)
        raise
    shutil.rmtree(old)
