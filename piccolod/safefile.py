"""Reading a small file the agent did not write itself (or must not trust), without being hurt by it.

One way to read for the journal (:mod:`piccolod.journal`), the pass token (:mod:`piccolod.passtoken`) and
the kernel command line (:mod:`piccolod.cmdline`): opened without following a symbolic link and without
blocking on a FIFO (``O_NOFOLLOW | O_NONBLOCK``), accepted only as a regular file (``fstat``), and read up
to a limit. Anything else is an :class:`UnsafeFile` whose text is one line naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path


class UnsafeFile(Exception):
    """A file exists but cannot be read safely; ``str()`` is one line that names the file."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(
    path: Path,
    limit: int,
    *,
    follow: bool = False,
    check: Callable[[os.stat_result], str | None] | None = None,
) -> bytes | None:
    """The bytes of the regular file ``path`` (None when it does not exist), at most ``limit`` of them.

    ``follow``: whether a symbolic link may be followed (the kernel's files are links nowhere); ``check``
    may refuse the file by its ``stat`` (returning why). Raises :class:`UnsafeFile`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise UnsafeFile(f"{path}: is a symbolic link: not followed") from None
        raise UnsafeFile(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path}: is {_kind(st.st_mode)}, not a regular file: not read")
        why = check(st) if check is not None else None
        if why:
            raise UnsafeFile(f"{path}: {why}")
        if st.st_size > limit:
            raise UnsafeFile(f"{path}: {st.st_size} bytes, more than the {limit} it may have")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFile(f"{path}: grew past the {limit} bytes it may have")
        return b"".join(chunks)
    except OSError as e:
        raise UnsafeFile(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
