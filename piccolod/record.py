"""The rollback record: why the gate failed, written where the rollback cannot erase it.

The record lives in the state directory (``/var/lib/piccolod`` on the ROOT partition, which both /usr
slots share), so the agent on the old slot finds it after GRUB falls back. It holds the boot id, the slot
and its PARTUUID, the OS version, each component's verdict, reason and duration, the failure condition
that fired and timestamps. Writes are atomic: a temporary file in the same directory, fsync, rename,
fsync of the directory; a reader never sees half a record.

On a later boot :func:`update_status` says ``rolled_back`` when the record names another slot than the
booted one, the booted one is marked good, and the record comes from an earlier boot. A later gate that
passes moves the record aside (:func:`supersede`), so an accepted update is not reported as rolled back.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from piccolod.result import CheckResult
from piccolod.slot import BootSlot, SlotState

RECORD_NAME = "rollback.json"
PREVIOUS_NAME = "rollback.previous.json"
FORMAT = 1
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
RELEASE_FILES = (Path("/usr/share/flatcar/release"), Path("/etc/os-release"), Path("/usr/lib/os-release"))
ROLLED_BACK = "rolled_back"


class RecordError(Exception):
    """A record file exists but cannot be read or parsed; ``str()`` names the file."""


@dataclass(frozen=True)
class ComponentVerdict:
    component: str
    healthy: bool
    required: bool
    reason: str
    duration_seconds: float

    @classmethod
    def of(cls, r: CheckResult) -> ComponentVerdict:
        return cls(str(r.component), r.healthy, r.required, r.reason, round(r.duration_seconds, 4))


@dataclass(frozen=True)
class RollbackRecord:
    """One failed gate. Timestamps are seconds since the epoch (UTC)."""

    boot_id: str
    slot: str | None
    partuuid: str | None
    disk: str | None
    os_version: str | None
    condition: str | None
    reason: str
    started_at: float
    failed_at: float
    deadline_seconds: float
    attempts: int
    reboot_requested: bool
    components: tuple[ComponentVerdict, ...] = field(default=())
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RollbackRecord:
        """Build a record from parsed JSON; raises ValueError naming the first field of a wrong type."""
        comps_data = data.get("components", ())
        if not isinstance(comps_data, list | tuple):
            raise ValueError("components: expected a list")  # noqa: TRY004 - read() reports ValueError
        comps = []
        for i, c in enumerate(comps_data):
            if not isinstance(c, dict):
                raise ValueError(f"components[{i}]: expected an object")  # noqa: TRY004
            _check_types(c, _COMPONENT_TYPES, f"components[{i}].")
            comps.append(ComponentVerdict(**{k: v for k, v in c.items() if k in _COMPONENT_TYPES}))
        _check_types(data, _RECORD_TYPES, "")
        known = {k: v for k, v in data.items() if k in _RECORD_TYPES}
        return cls(components=tuple(comps), **known)


_NUMBER = (int, float)
_COMPONENT_TYPES: dict[str, tuple[type, ...]] = {
    "component": (str,),
    "healthy": (bool,),
    "required": (bool,),
    "reason": (str,),
    "duration_seconds": _NUMBER,
}
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "boot_id": (str,),
    "slot": (str, type(None)),
    "partuuid": (str, type(None)),
    "disk": (str, type(None)),
    "os_version": (str, type(None)),
    "condition": (str, type(None)),
    "reason": (str,),
    "started_at": _NUMBER,
    "failed_at": _NUMBER,
    "deadline_seconds": _NUMBER,
    "attempts": (int,),
    "reboot_requested": (bool,),
    "format": (int,),
}
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}


def _check_types(data: Mapping[str, Any], types: Mapping[str, tuple[type, ...]], prefix: str) -> None:
    """Raise ValueError for the first known field of a wrong type (bool is not a number here)."""
    for key, allowed in types.items():
        if key not in data:
            continue  # missing fields: the dataclass constructor says which (TypeError)
        value = data[key]
        is_bool = isinstance(value, bool)
        if any(isinstance(value, t) and (t is bool or not is_bool) for t in allowed):
            continue
        want = " or ".join(_TYPE_NAMES.get(t, "null") for t in allowed)
        raise ValueError(f"{prefix}{key}: expected {want}, got {type(value).__name__}")


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def os_version(files: Iterable[Path] = RELEASE_FILES) -> str | None:
    """``FLATCAR_RELEASE_VERSION`` from Flatcar's release file, else ``VERSION_ID`` from os-release."""
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        values = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip("\"'")
        for key in ("FLATCAR_RELEASE_VERSION", "VERSION_ID"):
            if values.get(key):
                return values[key]
    return None


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically and durably (tmp + fsync + rename + dir fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write(state_dir: Path, record: RollbackRecord) -> Path:
    path = state_dir / RECORD_NAME
    write_json_atomic(path, record.to_json())
    return path


def read(state_dir: Path, name: str = RECORD_NAME) -> RollbackRecord | None:
    """The record in ``state_dir``, None when there is none. Raises :class:`RecordError` if unreadable."""
    path = state_dir / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RecordError(f"{path}: cannot read: {e.strerror}") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RecordError(f"{path}: not JSON: {e}") from e
    if not isinstance(data, dict):
        raise RecordError(f"{path}: not a rollback record (not a JSON object)")
    try:
        return RollbackRecord.from_json(data)
    except (ValueError, TypeError) as e:
        raise RecordError(f"{path}: not a rollback record: {e}") from e


def supersede(state_dir: Path) -> None:
    """An update passed its gate: keep the old record as the previous one, out of the way."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / RECORD_NAME).replace(state_dir / PREVIOUS_NAME)


def is_rolled_back(record: RollbackRecord | None, slot: BootSlot, boot_id: str) -> bool:
    """Whether this boot is the fallback after ``record``'s failed gate."""
    return (
        record is not None
        and record.boot_id != boot_id
        and slot.state is SlotState.MARKED
        and slot.partuuid is not None
        and record.partuuid != slot.partuuid
    )


def update_status(record: RollbackRecord | None, slot: BootSlot, boot_id: str) -> tuple[str, str] | None:
    """``("rolled_back", reason)`` on the fallback boot, else None (the daemon's own status applies)."""
    if record is None or not is_rolled_back(record, slot, boot_id):
        return None
    what = record.condition or "gate failed"
    return ROLLED_BACK, f"{record.slot or record.partuuid} rolled back: {what}: {record.reason}"


def format_record(record: RollbackRecord | None) -> str:
    """Human-readable lines for ``piccolod status``."""
    if record is None:
        return "last rollback record: none"

    def when(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    lines = [
        f"last rollback record: {record.slot} ({record.partuuid}) os {record.os_version or '?'}",
        f"  condition: {record.condition}  reason: {record.reason}",
        f"  boot {record.boot_id}  started {when(record.started_at)}  failed {when(record.failed_at)}"
        f"  attempts {record.attempts}  reboot requested: {'yes' if record.reboot_requested else 'no'}",
    ]
    for c in record.components:
        verdict = "ok  " if c.healthy else "FAIL"
        kind = "required" if c.required else "optional"
        lines.append(f"  {verdict} {c.component:10} {kind:8} {c.duration_seconds:7.3f}s  {c.reason}")
    return "\n".join(lines)
