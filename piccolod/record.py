"""The rollback record: why a gate failed, kept where the rollback cannot erase it.

A record holds the boot id, the slot and its PARTUUID, the OS version, each component's verdict, reason
and duration, the failure condition that fired and timestamps. It lives in the agent's journal
(:mod:`piccolod.journal`) in the state directory (``/var/lib/piccolod`` on the ROOT partition, which both
/usr slots share), so the agent on the old slot finds it after GRUB falls back.

On a later boot :func:`update_status` says ``rolled_back`` when the record names another slot than the
booted one, the booted one is marked good, and the record comes from an earlier boot. A later gate that
passes moves the record aside (the journal's ``previous_rollback``), so an accepted update is not
reported as rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from piccolod import osinfo
from piccolod.baseline import Classified
from piccolod.model import to_plain
from piccolod.result import CheckResult
from piccolod.slot import BootSlot, SlotState
from piccolod.text import printable

FORMAT = 1
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
RELEASE_FILES = (Path("/usr/share/flatcar/release"), Path("/etc/os-release"), Path("/usr/lib/os-release"))
ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class ComponentVerdict:
    """One check in a failed gate: its verdict and what its run said (``state``: passed, failed,
    unknown, refused, cancelled, skipped; empty in records of agents before checks had states).
    ``failure_class`` and ``class_reason``: a failing required check's class
    (:mod:`piccolod.baseline`), empty for the others."""

    ignores_unknown_keys: ClassVar[bool] = True

    component: str
    healthy: bool
    required: bool
    reason: str
    duration_seconds: float
    state: str = ""
    failure_class: str = ""
    class_reason: str = ""

    @classmethod
    def of(cls, r: CheckResult, classified: Classified | None = None) -> ComponentVerdict:
        return cls(
            str(r.component),
            r.healthy,
            r.required,
            r.reason,
            round(r.duration_seconds, 4),
            str(r.state),
            str(classified.failure_class) if classified else "",
            classified.reason if classified else "",
        )


@dataclass(frozen=True)
class RollbackRecord:
    """One failed gate. Timestamps are seconds since the epoch (UTC). ``failure_class``: the worst
    class of its failing required checks (``regression``, ``inconclusive``, ``pre_existing``)."""

    ignores_unknown_keys: ClassVar[bool] = True

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
    failure_class: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = to_plain(self)
        return data


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def os_version(files: Iterable[Path] = RELEASE_FILES) -> str | None:
    """``FLATCAR_RELEASE_VERSION`` from Flatcar's release file, else ``VERSION_ID`` from os-release
    (each file read bounded, as :mod:`piccolod.osinfo` reads them)."""
    for path in files:
        values = osinfo.read_values(path) or {}
        for key in ("FLATCAR_RELEASE_VERSION", "VERSION_ID"):
            if values.get(key):
                return osinfo.label_text(values[key])
    return None


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


def when(t: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC time, to the second; a stored value no clock reaches
    is shown as it is, never fatal."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, ValueError, OSError):
        return f"{t!r} (not a time)"


def format_tally(count: int, last_at: float) -> str:
    """The journal's rollback tally as ``piccolod status`` shows it."""
    if count <= 0:
        return "rollbacks: none"
    return f"rollbacks: {count}, the last one failed its gate at {when(last_at)}"


def format_record(record: RollbackRecord | None) -> str:
    """Human-readable lines for ``piccolod status``."""
    if record is None:
        return "last rollback record: none"

    lines = [
        f"last rollback record: {record.slot} ({record.partuuid}) os {record.os_version or '?'}",
        f"  condition: {record.condition}  reason: {record.reason}",
        *([f"  class: {record.failure_class}"] if record.failure_class else []),
        f"  boot {record.boot_id}  started {when(record.started_at)}  failed {when(record.failed_at)}"
        f"  attempts {record.attempts}  reboot requested: {'yes' if record.reboot_requested else 'no'}",
    ]
    for c in record.components:
        verdict = "ok  " if c.healthy else (c.state.upper() if c.state not in ("", "failed") else "FAIL")
        kind = "required" if c.required else "optional"
        lines.append(f"  {verdict} {c.component:10} {kind:8} {c.duration_seconds:7.3f}s  {c.reason}")
        if c.failure_class:
            lines.append(f"       {c.failure_class}: {c.class_reason}")
    return "\n".join(printable(line) for line in lines)  # stored texts never reach a terminal raw
