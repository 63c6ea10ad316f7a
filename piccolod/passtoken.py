"""The pass token: how the agent tells the base image's guard that the gate of this boot passed.

``update-engine.service`` waits for ``piccolod-guard.service`` (in the base image, no Python), not for
``piccolod.service`` (in the sysext). On a slot that is not marked good the guard lets update-engine
start only once ``gate-passed`` in the agent's runtime directory (``/run/piccolod``, per boot, root
only) holds this boot's id. Only the agent writes it, and only after its gate passed in this boot (or
found the slot marked good); /run is emptied on every boot, and the boot id in the file makes a stale
copy useless anyway.

The directory is ``$RUNTIME_DIRECTORY`` (systemd sets it from the unit's ``RuntimeDirectory=``) or
``/run/piccolod``. The file is written atomically: the guard never reads half a token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from piccolod.journal import write_atomic

TOKEN_NAME = "gate-passed"  # noqa: S105 - a file name, not a secret
RUN_DIR = Path("/run/piccolod")


def token_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return (Path(runtime) if runtime else RUN_DIR) / TOKEN_NAME


def write(path: Path, boot_id: str) -> None:
    """Write the token for ``boot_id``; raises OSError."""
    write_atomic(path, boot_id + "\n")
    path.chmod(0o600)
