"""update_engine's status, as ``update_engine_client -status`` prints it.

flatcar/update_engine's client asks the daemon over D-Bus (``com.coreos.update1.Manager.GetStatus``,
allowed to root by its bus policy) and prints five lines on stdout::

    LAST_CHECKED_TIME=1733600000
    PROGRESS=0.000000
    CURRENT_OP=UPDATE_STATUS_IDLE
    NEW_VERSION=0.0.0
    NEW_SIZE=0

``CURRENT_OP`` is one of :class:`Op`; ``UPDATE_STATUS_UPDATED_NEED_REBOOT`` says the other slot holds a
finished update (it survives a restart of the daemon: a marker file in ``/run``). Its own log lines go
to stderr. When the daemon is not on the bus the client retries for about 30 s and then aborts, so a
query here is bounded by its own timeout and killed at it.

The output is hostile input like everything the agent reads: at most :data:`MAX_OUTPUT` bytes are kept,
only ``KEY=VALUE`` lines count, each key at most once, and all five must be there with values of their
form; anything else is an :class:`EngineError` whose text is one printable line.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from piccolod import run
from piccolod.text import printable

CLIENT = "update_engine_client"
CLIENT_ENV = "PICCOLOD_UPDATE_ENGINE_CLIENT"  # tests: the path of a stand-in
TIMEOUT_SECONDS = 5.0
MAX_OUTPUT = 4096
MAX_VERSION = 64
_KEYS = ("LAST_CHECKED_TIME", "PROGRESS", "CURRENT_OP", "NEW_VERSION", "NEW_SIZE")
_LINE = re.compile(r"^([A-Z_]+)=(.*)$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
_INT = re.compile(r"^-?[0-9]{1,19}$")


class EngineError(Exception):
    """update_engine's status could not be had; ``str()`` is one printable line."""


class Op(enum.StrEnum):
    IDLE = "UPDATE_STATUS_IDLE"
    CHECKING_FOR_UPDATE = "UPDATE_STATUS_CHECKING_FOR_UPDATE"
    UPDATE_AVAILABLE = "UPDATE_STATUS_UPDATE_AVAILABLE"
    DOWNLOADING = "UPDATE_STATUS_DOWNLOADING"
    VERIFYING = "UPDATE_STATUS_VERIFYING"
    FINALIZING = "UPDATE_STATUS_FINALIZING"
    UPDATED_NEED_REBOOT = "UPDATE_STATUS_UPDATED_NEED_REBOOT"
    REPORTING_ERROR_EVENT = "UPDATE_STATUS_REPORTING_ERROR_EVENT"


# An update is being applied to the other slot (a check alone is not: most checks find nothing).
APPLYING = frozenset({Op.UPDATE_AVAILABLE, Op.DOWNLOADING, Op.VERIFYING, Op.FINALIZING})
BUSY = APPLYING | {Op.CHECKING_FOR_UPDATE, Op.REPORTING_ERROR_EVENT}


@dataclass(frozen=True)
class EngineStatus:
    last_checked_time: int
    progress: float
    current_op: Op
    new_version: str  # "0.0.0" (update_engine's "none") until an update is offered
    new_size: int

    @property
    def offered_version(self) -> str:
        """The version being (or already) applied, "" when none."""
        return "" if self.new_version in ("", "0.0.0") else self.new_version


def parse_status(data: bytes) -> EngineStatus:
    """The status in the client's output ``data``; raises :class:`EngineError`."""
    text = data[-MAX_OUTPUT:].decode("utf-8", errors="replace")
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or m.group(1) not in _KEYS:
            continue
        if m.group(1) in found:
            raise EngineError(f"update_engine_client: {m.group(1)} given twice")
        found[m.group(1)] = m.group(2)
    missing = [k for k in _KEYS if k not in found]
    if missing:
        raise EngineError(f"update_engine_client: no {', '.join(missing)} in its output")
    try:
        op = Op(found["CURRENT_OP"])
    except ValueError:
        raise EngineError(
            printable(f"update_engine_client: unknown CURRENT_OP {found['CURRENT_OP'][:64]!r}")
        ) from None
    for key in ("LAST_CHECKED_TIME", "NEW_SIZE"):
        if not _INT.match(found[key]):
            raise EngineError(
                printable(f"update_engine_client: {key} is not an integer: {found[key][:32]!r}")
            )
    try:
        progress = float(found["PROGRESS"])
    except ValueError:
        progress = math.nan
    if not 0.0 <= progress <= 1.0:
        raise EngineError(printable(f"update_engine_client: PROGRESS is not 0-1: {found['PROGRESS'][:32]!r}"))
    version = found["NEW_VERSION"]
    if len(version) > MAX_VERSION or not _VERSION.match(version):
        raise EngineError(printable(f"update_engine_client: NEW_VERSION is not a version: {version[:64]!r}"))
    return EngineStatus(int(found["LAST_CHECKED_TIME"]), progress, op, version, int(found["NEW_SIZE"]))


def client(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get(CLIENT_ENV) or CLIENT


def _call(flag: str, timeout: float, env: Mapping[str, str] | None) -> bytes:
    argv = [client(env), flag]
    try:
        got = run.run_check(argv, timeout, run.base_env(), keep=MAX_OUTPUT)
    except OSError as e:
        raise EngineError(printable(f"{argv[0]}: cannot run: {e.strerror or e}")) from None
    if got.timed_out:
        raise EngineError(f"{argv[0]} {flag}: no answer within {timeout:g}s (is update-engine running?)")
    if got.returncode != 0:
        last = got.output.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise EngineError(printable(f"{argv[0]} {flag}: exit status {got.returncode}: {last[0][:200]}"))
    return got.output


def query(timeout: float = TIMEOUT_SECONDS, env: Mapping[str, str] | None = None) -> EngineStatus:
    """update_engine's status now; raises :class:`EngineError`."""
    return parse_status(_call("-status", timeout, env))


def reset(timeout: float = TIMEOUT_SECONDS, env: Mapping[str, str] | None = None) -> None:
    """``update_engine_client -reset_status``: update_engine allows it only from IDLE and from
    NEED_REBOOT, where it goes back to IDLE and removes its reboot marker (so a reboot manager no
    longer sees an update waiting); it does not undo what the postinstall step wrote into the GPT."""
    _call("-reset_status", timeout, env)
