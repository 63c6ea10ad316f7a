"""Which /usr slot this boot runs from, and the state of both slots (USR-A, USR-B).

GRUB's ``gptprio.next`` boots a flatcar-usr partition and names it on the kernel command line as
``mount.usr=PARTUUID=<uuid>``, or, with dm-verity, ``mount.usr=/dev/mapper/usr verity.usr=PARTUUID=<uuid>``
(docs/flatcar.md); plain ``usr=`` is accepted too. The disk holding that partition is the configured
path, or found automatically: the udev link ``/dev/disk/by-partuuid/<uuid>`` when it exists, else every
partitioned disk under ``/sys/block`` is read until one has the PARTUUID. Its GPT entry is then read
directly (:mod:`piccolod.gpt`, which says which copy it used and why, and refuses copies that disagree),
so the slot state is exactly what GRUB and update_engine see. The booted PARTUUID must name a /usr slot,
and USR-A and USR-B must each be one partition: anything ambiguous is an error, and the state unknown.

Nothing here raises on a bad disk: :func:`detect` returns a :class:`BootSlot` whose ``error`` says what
went wrong and whose state is ``unknown``, which the gate treats as fail-closed.
"""

from __future__ import annotations

import enum
import errno
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from piccolod.gpt import FLATCAR_USR_TYPE, GptError, Partition, Table, read_table
from piccolod.text import printable

CMDLINE_KEYS = ("mount.usr", "verity.usr", "usr")
SLOT_BY_NUMBER = {3: "USR-A", 4: "USR-B"}
SLOT_NAMES = ("USR-A", "USR-B")


class SlotError(Exception):
    """The booted slot cannot be determined; ``str()`` is a one-line reason."""


class SlotState(enum.StrEnum):
    MARKED = "marked"  # successful=1: never gate
    UNMARKED = "unmarked"  # successful=0: first boot of an update, gate it
    UNKNOWN = "unknown"  # could not read the slot: gate closed, but never reboot


@dataclass(frozen=True)
class SlotRow:
    """One USR slot as ``piccolod status`` shows it."""

    name: str
    number: int
    partuuid: str
    priority: int
    tries: int
    successful: bool
    booted: bool


@dataclass(frozen=True)
class BootSlot:
    """What :func:`detect` found: the booted slot (or why not) and the table of both slots."""

    partuuid: str | None
    disk: str | None
    name: str | None
    state: SlotState
    rows: tuple[SlotRow, ...] = field(default=())
    error: str | None = None
    gpt_header: str | None = None  # "primary" or "backup": which GPT copy the table came from
    gpt_header_lba: int | None = None
    gpt_primary_error: str | None = None  # why the primary copy was not used
    gpt_backup_error: str | None = None  # why the backup copy could not confirm the primary
    gpt_source: str | None = None  # the copy used and why, in words (piccolod.gpt.Table.source)

    @property
    def gpt_note(self) -> str | None:
        """One line on the GPT copy read (None when the disk was not read)."""
        if self.gpt_source is None:
            return None
        repair = "; run cgpt repair" if self.gpt_primary_error or self.gpt_backup_error else ""
        return f"gpt: {self.gpt_source}{repair}"

    @property
    def booted(self) -> SlotRow | None:
        return next((r for r in self.rows if r.booted), None)


def parse_cmdline(text: str) -> str | None:
    """The booted USR PARTUUID (lower case) named by a kernel command line, or None.

    ``mount.usr`` wins over ``verity.usr`` over ``usr``; a key whose value is not a PARTUUID (such as
    ``mount.usr=/dev/mapper/usr``) falls through to the next one. The last occurrence of a key counts.
    """
    values: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key in CMDLINE_KEYS:
            values[key] = value.strip('"')
    for key in CMDLINE_KEYS:
        found = _partuuid_of(values.get(key, ""))
        if found:
            return found
    return None


def _partuuid_of(value: str) -> str | None:
    for prefix in ("PARTUUID=", "/dev/disk/by-partuuid/"):
        if value.upper().startswith(prefix.upper()):
            try:
                return str(uuid.UUID(value[len(prefix) :]))
            except ValueError:
                return None
    return None


def slot_name(part: Partition) -> str:
    """USR-A/USR-B by partition label, else by Flatcar's partition number (3 and 4)."""
    if part.name in SLOT_NAMES:
        return part.name
    return SLOT_BY_NUMBER.get(part.number, f"partition {part.number}")


def usr_partitions(table: Table) -> list[Partition]:
    """The flatcar-usr partitions (or, without any, those labelled USR-A/USR-B)."""
    usr = [p for p in table.partitions if p.type_guid == FLATCAR_USR_TYPE]
    return usr or [p for p in table.partitions if p.name in SLOT_NAMES]


def slot_rows(table: Table, booted: str | None) -> tuple[SlotRow, ...]:
    """Rows for the /usr slots (:func:`usr_partitions`)."""
    usr = usr_partitions(table)
    return tuple(
        SlotRow(
            slot_name(p),
            p.number,
            str(p.unique_guid),
            p.priority,
            p.tries,
            p.successful,
            str(p.unique_guid) == booted,
        )
        for p in usr
    )


def find_disk(partuuid: str, *, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> str:
    """The whole-disk device holding ``partuuid``. Raises :class:`SlotError` when none does."""
    link = dev_root / "disk" / "by-partuuid" / partuuid
    if link.exists():
        part = link.resolve().name
        sys_part = (sys_root / "class" / "block" / part).resolve()
        if (sys_part / "partition").exists():
            return str(dev_root / sys_part.parent.name)
    tried: list[str] = []
    unreadable: list[str] = []
    block = sys_root / "block"
    try:
        disks = sorted(block.iterdir()) if block.is_dir() else []
    except OSError as e:
        raise SlotError(f"{block}: cannot list disks: {e.strerror}") from e
    for disk in disks:
        try:  # a disk may vanish while we look (hot unplug, a loop device detached)
            if not any((sub / "partition").exists() for sub in disk.iterdir() if sub.is_dir()):
                continue
        except OSError:
            continue
        dev = dev_root / disk.name
        tried.append(dev.name)
        try:
            if read_table(dev).by_partuuid(partuuid) is not None:
                return str(dev)
        except GptError as e:
            if isinstance(e.__cause__, OSError) and e.__cause__.errno in _DENIED:
                unreadable.append(f"{dev}: {_denied(e.__cause__)}")
            elif e.found_gpt:  # a GPT that cannot be trusted may well be the one we look for
                unreadable.append(str(e))
            continue
    why = f"no disk holds PARTUUID {partuuid} (searched: {', '.join(tried) or 'no disks'})"
    if unreadable:
        why += "; cannot use " + "; ".join(unreadable)
    raise SlotError(why)


_DENIED = (errno.EPERM, errno.EACCES)


def _denied(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "?")
    return f"{e.strerror} ({name}; is this device type allowed by the unit's DeviceAllow=?)"


def detect(cmdline: str | Path, disk: str = "auto", **where: Path) -> BootSlot:
    """Read the command line file and the disk; never raises (errors land in ``BootSlot.error``).

    ``where`` passes ``sys_root``/``dev_root`` to :func:`find_disk` (tests point them at a tree).
    """
    found: dict[str, str] = {}
    try:
        table, part = _locate(Path(cmdline), disk, found, where)
    except SlotError as e:
        return BootSlot(found.get("partuuid"), found.get("disk"), None, SlotState.UNKNOWN, error=str(e))
    partuuid = found["partuuid"]
    state = SlotState.MARKED if part.successful else SlotState.UNMARKED
    return BootSlot(
        partuuid,
        found["disk"],
        slot_name(part),
        state,
        slot_rows(table, partuuid),
        gpt_header=table.header,
        gpt_header_lba=table.header_lba,
        gpt_primary_error=table.primary_error,
        gpt_backup_error=table.backup_error,
        gpt_source=table.source,
    )


def _locate(
    cmdline: Path, disk: str, found: dict[str, str], where: dict[str, Path]
) -> tuple[Table, Partition]:
    try:
        text = cmdline.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SlotError(f"{cmdline}: cannot read kernel command line: {e.strerror}") from e
    partuuid = parse_cmdline(text)
    if partuuid is None:
        raise SlotError(f"{cmdline}: no mount.usr=, verity.usr= or usr= with a PARTUUID")
    found["partuuid"] = partuuid
    found["disk"] = disk_path = find_disk(partuuid, **where) if disk == "auto" else disk
    try:
        table = read_table(disk_path)
    except GptError as e:
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in _DENIED:
            raise SlotError(f"cannot open the boot disk {disk_path}: {_denied(cause)}") from e
        raise SlotError(str(e)) from e
    part = table.by_partuuid(partuuid)
    if part is None:
        raise SlotError(f"{disk_path}: no partition with PARTUUID {partuuid}")
    if part not in usr_partitions(table):
        raise SlotError(
            f"{disk_path}: PARTUUID {partuuid} is partition {part.number} ({part.name or 'unlabelled'}), "
            "not a /usr slot"
        )
    for label in SLOT_NAMES:
        same = [p.number for p in usr_partitions(table) if slot_name(p) == label]
        if len(same) > 1:
            raise SlotError(
                f"{disk_path}: partitions {' and '.join(map(str, same))} are both {label}: which slot is "
                "which is ambiguous"
            )
    return table, part


def format_table(slot: BootSlot) -> str:
    """The slot table as aligned text, with the booted slot starred, or the error."""
    lines = [f"{'':2}{'slot':8}{'part':>5}  {'partuuid':36}  {'prio':>4} {'tries':>5} {'success':>7}"]
    for r in slot.rows:
        star = "*" if r.booted else " "
        lines.append(
            f"{star:2}{r.name:8}{r.number:>5}  {r.partuuid:36}  {r.priority:>4} {r.tries:>5} "
            f"{int(r.successful):>7}"
        )
    lines.append(
        printable(f"booted: {slot.name or '?'} ({slot.partuuid or '?'}) on {slot.disk or '?'}: {slot.state}")
    )
    if slot.gpt_note:
        lines.append(printable(slot.gpt_note))
    if slot.error:
        lines.append(printable(f"error: {slot.error}"))
    return "\n".join(lines)
