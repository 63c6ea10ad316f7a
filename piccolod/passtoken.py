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

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from piccolod.journal import write_atomic
from piccolod.safefile import UnsafeFile, read_regular

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


def _not_roots_0600(st: os.stat_result) -> str | None:
    if st.st_uid != OWNER or stat.S_IMODE(st.st_mode) != MODE:
        return f"owner {st.st_uid} mode {stat.S_IMODE(st.st_mode):o}, not root's 0600"
    return None


def read(path: Path) -> str | None:
    """The boot id in the token (None when there is none); raises :class:`TokenError` for a file that
    is not a token: a symbolic link, not a regular file, not root's, not mode 0600, or too long."""
    try:
        data = read_regular(path, MAX_BYTES, check=_not_roots_0600)
    except UnsafeFile as e:
        raise TokenError(str(e)) from None
    return None if data is None else data.split(b"\n", 1)[0].decode("ascii", "replace")


def passed(path: Path, boot_id: str) -> bool:
    """Whether ``path`` is a token of boot ``boot_id`` (a file that is not a token: False)."""
    try:
        return bool(boot_id) and read(path) == boot_id
    except TokenError:
        return False
