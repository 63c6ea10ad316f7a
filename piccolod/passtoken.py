"""The pass token: how the agent tells the base image's guard that the gate of this boot passed.

``update-engine.service`` waits for ``piccolod-guard.service`` (in the base image, no Python), not for
``piccolod.service`` (in the sysext). On a slot that is not marked good the guard lets update-engine
start only once ``gate-passed`` in the agent's runtime directory (``/run/piccolod``, per boot, root
only) holds this boot's id. Only the agent writes it, and only after its gate passed in this boot (or
found the slot marked good); /run is emptied on every boot, and the boot id in the file makes a stale
copy useless anyway.

The directory is ``$RUNTIME_DIRECTORY`` (systemd sets it from the unit's ``RuntimeDirectory=``) or
``/run/piccolod``. The file is written atomically (the guard never reads half a token) as a regular file
owned by root with mode 0600, and a token counts only when it is exactly that: the guard and
:func:`read` refuse a symbolic link, any other file type, another owner or another mode.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from piccolod.journal import write_atomic

TOKEN_NAME = "gate-passed"  # noqa: S105 - a file name, not a secret
RUN_DIR = Path("/run/piccolod")
MODE = 0o600
OWNER = 0  # root
MAX_BYTES = 128


class TokenError(Exception):
    """A file is where the token belongs but is not a token; ``str()`` is one line."""


def token_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return (Path(runtime) if runtime else RUN_DIR) / TOKEN_NAME


def write(path: Path, boot_id: str) -> None:
    """Write the token for ``boot_id`` (root's, 0600, regular, atomically); raises OSError."""
    write_atomic(path, boot_id + "\n")  # mkstemp: 0600, owned by the agent (root), then renamed
    path.chmod(MODE)


def read(path: Path) -> str | None:
    """The boot id in the token (None when there is none); raises :class:`TokenError` for a file that
    is not a token: a symbolic link, not a regular file, not root's, not mode 0600, or too long."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TokenError(f"{path}: is a symbolic link, not a token") from None
        raise TokenError(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"{path}: not a regular file")
        if st.st_uid != OWNER or stat.S_IMODE(st.st_mode) != MODE:
            raise TokenError(f"{path}: owner {st.st_uid} mode {stat.S_IMODE(st.st_mode):o}, not root's 0600")
        data = os.read(fd, MAX_BYTES + 1)
    except OSError as e:
        raise TokenError(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise TokenError(f"{path}: longer than a boot id")
    return data.split(b"\n", 1)[0].decode("ascii", "replace")


def passed(path: Path, boot_id: str) -> bool:
    """Whether ``path`` is a token of boot ``boot_id`` (a file that is not a token: False)."""
    try:
        return bool(boot_id) and read(path) == boot_id
    except TokenError:
        return False
