"""The ``storage`` check: free space and I/O error counts of each configured mount.

Free space is ``f_bavail / f_blocks`` from ``statvfs`` (what an unprivileged writer can still use, as
``df`` shows it), in percent with one decimal. A configured path that is a plain directory (``/var`` on
Flatcar lives on the root file system) is measured on the file system that holds it; a missing path
fails the check.

I/O errors come from documented kernel counters, summed per mount (``io_error_counters`` maps each
file read to its value; an empty mapping means the file system has none and the count is reported as
0). The top-level ``io_errors`` counts each counter once, however many configured paths share it:

- ext2/3/4 (ext4 driver): ``/sys/fs/ext4/<dev>/errors_count`` (fs/ext4/sysfs.c), the superblock's
  ``s_error_count``, which the kernel logs at mount as "error count since last fsck". Every
  ``ext4_error`` (I/O errors on metadata, corruption found) increments it.
- btrfs: ``/sys/fs/btrfs/<fsid>/devinfo/<devid>/error_stats`` (Linux 5.14+, the same numbers as
  ``btrfs device stats``: write, read, flush, corruption and generation errors of each member device).
- SCSI-backed disks (sd, including SATA/USB/virtio-scsi): ``/sys/block/<disk>/device/ioerr_cnt``, the
  number of commands the SCSI midlayer completed with an error (hexadecimal).
- XFS, tmpfs, overlayfs and others expose no error counter: 0, and an empty mapping.

The ext4 and btrfs counts live on disk and survive reboots until ``e2fsck`` or ``btrfs device stats
-z`` resets them, so a file system that once saw an error keeps failing a ``max_io_errors: 0`` policy
until an administrator has looked at it; the SCSI count starts at 0 on every boot.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from piccolod.checks.bounded import race
from piccolod.policy import PolicyFile
from piccolod.result import Outcome

MOUNTINFO = Path("/proc/self/mountinfo")
SYSFS = Path("/sys")


UNMEASURED: dict[str, Any] = {
    "free_space_percent": None,
    "io_errors": None,
    "device": None,
    "mounted_on": None,
    "fstype": None,
    "io_error_counters": {},
}


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    major_minor: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Entries of ``/proc/<pid>/mountinfo`` (proc(5)) in mount order."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        sep = fields.index("-")
        entries.append(
            MountEntry(
                mount_point=_unescape(fields[4]),
                major_minor=fields[2],
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
            )
        )
    return entries


def containing_mount(path: str, entries: list[MountEntry]) -> MountEntry | None:
    """The mount that holds ``path``: the longest mount point above it, the latest one if stacked."""
    best: MountEntry | None = None
    for entry in entries:
        mp = entry.mount_point.rstrip("/") or "/"
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")
        ):
            best = entry
    return best


def _read_int(path: Path, base: int = 10) -> int:
    return int(path.read_text(encoding="ascii").strip(), base)


def _block_dir(entry: MountEntry) -> Path | None:
    """The sysfs directory of the mount's block device, if it has one."""
    candidates = [entry.major_minor]
    try:
        st = Path(entry.source).stat()
        if stat.S_ISBLK(st.st_mode):
            candidates.insert(0, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    except OSError:
        pass
    for majmin in candidates:
        link = SYSFS / "dev" / "block" / majmin
        if link.exists():
            return link.resolve()
    return None


def io_error_counters(entry: MountEntry) -> dict[str, int]:
    """The error counters that apply to ``entry``: sysfs path -> value."""
    counters: dict[str, int] = {}
    block = _block_dir(entry)
    if entry.fstype in {"ext2", "ext3", "ext4"} and block is not None:
        path = SYSFS / "fs" / "ext4" / block.name / "errors_count"
        if path.exists():
            counters[str(path)] = _read_int(path)
    if entry.fstype == "btrfs" and block is not None:
        for member in sorted((SYSFS / "fs" / "btrfs").glob(f"*/devices/{block.name}")):
            for stats in sorted(member.parent.parent.glob("devinfo/*/error_stats")):
                text = stats.read_text(encoding="ascii")
                counters[str(stats)] = sum(int(line.split()[1]) for line in text.splitlines() if line.strip())
    if block is not None:
        disk = block.parent if (block / "partition").exists() else block
        path = disk / "device" / "ioerr_cnt"
        if path.exists():
            counters[str(path)] = _read_int(path, 16)
    return counters


def measure(path: str, entries: list[MountEntry]) -> dict[str, Any]:
    """One mount's details; raises ``OSError`` for a path that cannot be examined."""
    real = Path(path).resolve()
    if not real.exists():
        raise FileNotFoundError(f"{path} does not exist")
    vfs = os.statvfs(real)
    entry = containing_mount(str(real), entries)
    free = round(100.0 * vfs.f_bavail / vfs.f_blocks, 1) if vfs.f_blocks else 0.0
    counters = io_error_counters(entry) if entry is not None else {}
    return {
        "free_space_percent": free,
        "io_errors": sum(counters.values()),
        "device": entry.source if entry is not None else None,
        "mounted_on": entry.mount_point if entry is not None else None,
        "fstype": entry.fstype if entry is not None else None,
        "io_error_counters": dict(sorted(counters.items())),
    }


def check_storage(policy: PolicyFile, timeout: float) -> Outcome:
    hp = policy.health_policy
    mounts = hp.checks.storage.mounts
    min_free = hp.thresholds.min_disk_space_percent
    max_errors = hp.thresholds.max_io_errors
    started = time.monotonic()
    entries = parse_mountinfo(MOUNTINFO.read_text(encoding="utf-8"))
    results = race(
        {m: partial(measure, m, entries) for m in mounts}, max(timeout - (time.monotonic() - started), 0)
    )

    per_mount: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for mount in mounts:
        result = results[mount]
        if isinstance(result, BaseException):
            why = str(result) or type(result).__name__
            per_mount[mount] = {**UNMEASURED, "error": why}
            problems.append(f"{mount}: {why}")
            continue
        per_mount[mount] = result
        if result["free_space_percent"] < min_free:
            problems.append(f"{mount}: {result['free_space_percent']}% free, below {min_free:g}%")
        if result["io_errors"] > max_errors:
            problems.append(f"{mount}: {result['io_errors']} I/O errors, more than {max_errors}")

    measured = [m for m in per_mount.values() if m["free_space_percent"] is not None]
    details = {
        "free_space_percent": min((m["free_space_percent"] for m in measured), default=None),
        "io_errors": sum({p: v for m in measured for p, v in m["io_error_counters"].items()}.values()),
        "mounts": per_mount,
    }
    if problems:
        return Outcome(False, "; ".join(problems), details)
    uncounted = [m for m, d in per_mount.items() if not d["io_error_counters"]]
    note = f" (no I/O error counter for {', '.join(uncounted)})" if uncounted else ""
    return Outcome(
        True,
        f"{len(mounts)} mounts, lowest free space {details['free_space_percent']}%, "
        f"{details['io_errors']} I/O errors{note}",
        details,
    )
