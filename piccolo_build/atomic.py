"""Writing a file and replacing a whole directory in one step.

:func:`atomic_write` writes a file through a temporary sibling and a rename (lock, sdist, edits of the
flatcar/scripts checkout). Directories are shared by ``render`` (the overlay) and ``publish`` (a release):

:func:`replace_dir` puts a freshly written directory in place of the old one with Linux
``renameat2(RENAME_EXCHANGE)``, so there is no moment where the output is missing or half written; the
previous tree is removed afterwards. Where the kernel or file system cannot exchange, it falls back to two
renames (a short window without an output, restored if the second rename fails). Callers decide first
whether the output is theirs to replace: nothing here looks at what the directory holds.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically. False when the system cannot; other failures raise OSError."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, output: Path) -> None:
    """Replace ``output`` by ``new`` (a sibling on the same file system); ``new`` is consumed."""
    if not output.exists() and not output.is_symlink():
        new.rename(output)
        return
    if exchange(new, output):
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


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` with ``mode`` through a temporary sibling: readers see old or new."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["atomic_write", "exchange", "replace_dir"]
