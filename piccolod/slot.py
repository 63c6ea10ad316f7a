"""Which /usr slot this boot runs from, whether it is marked good, and the state of both slots.

The booted slot is the partition mounted on /usr (:mod:`piccolod.usrmount`: the mount table, through
device-mapper to the partition, and its disk from sysfs). Everything else is checked against that
partition and never used to find one. It is **marked** only when all of this holds:

- the disk's GPT verifies (:mod:`piccolod.gpt`: both copies checked in full, copies that disagree
  refused) and its entry at the partition's number is a Flatcar /usr partition (type flatcar-usr);
- its label is printable ASCII, and no other /usr entry carries the same label; its unique GUID is on the
  disk once (the reader refuses a table with one GUID twice);
- the kernel's idea of the partition (sysfs ``start`` and ``size``) is that entry's LBAs;
- the kernel command line names this very partition, in both readings of :mod:`piccolod.cmdline`:
  systemd's ``mount.usr=`` (``/dev/disk/by-partuuid/`` with the lower-case PARTUUID udev links by,
  ``/dev/disk/by-partlabel/`` with the GPT label, ``/dev/disk/by-label/`` with the file system label
  ``blkid`` reads, or the kernel's name ``/dev/vda3``) and Flatcar's early init's (``mount.usr=`` or
  ``usr=``: ``PARTUUID=`` in any case, ``PARTLABEL=``, ``LABEL=`` or one of those paths). When /usr is
  mounted through device-mapper, both must name ``/dev/mapper/<its name>`` and ``verity.usr=`` the
  partition under it;
- attribute bit 56 (successful) is set.

Anything missing, mismatched or ambiguous makes the state **unknown**, with a one-line reason, and
unknown never counts as marked: the gate fails closed on it, and the guard never opens on it.
``piccolod-guard`` applies the same rules (docs/boot.md), and the test suite runs both on the same
corpus of disks and command lines to hold the guard to at most what this module says.
"""

from __future__ import annotations

import enum
import errno
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from piccolod import cmdline as cl
from piccolod.gpt import FLATCAR_USR_TYPE, GptError, Partition, Table, read_table
from piccolod.text import printable
from piccolod.usrmount import AUTO, UsrError, UsrPartition, find

SLOT_BY_NUMBER = {3: "USR-A", 4: "USR-B"}
SLOT_NAMES = ("USR-A", "USR-B")
_LABEL = re.compile(r"[\x20-\x7e]{1,36}")
BLKID_SECONDS = 10.0


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
    number: int | None = None  # the booted partition's number
    found: str | None = None  # how the /usr partition was found, in words

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


# --- does the command line name this partition? -----------------------------------------------------


@dataclass
class _Named:
    """The booted partition as the command line may name it; the file system label is read on demand."""

    usr: UsrPartition
    entry: Partition
    sector: int
    _fs_label: bytes | None = None
    _probed: bool = False

    @property
    def guid(self) -> bytes:
        return str(self.entry.unique_guid).encode()

    @property
    def label(self) -> bytes:
        return self.entry.name.encode("ascii")

    def fs_label(self) -> bytes | None:
        """The file system label ``blkid`` probes in the partition (None: none, or not printable ASCII)."""
        if not self._probed:
            self._probed = True
            self._fs_label = _probe_label(self.usr.disk, self.entry, self.sector)
        return self._fs_label

    def by_path(self, what: bytes) -> bool:
        """Whether the device path ``what`` is this partition, as udev names it."""
        for prefix in (b"/dev/disk/by-partuuid/", b"/dev/disk/by-partlabel/", b"/dev/disk/by-label/"):
            if what.startswith(prefix):
                name = what[len(prefix) :]
                return bool(name) and name == self._link_name(prefix)
        kernel = self.usr.kernel_name
        return kernel is not None and what == b"/dev/" + kernel.replace("!", "/").encode()

    def _link_name(self, prefix: bytes) -> bytes:
        """The name udev gives this partition's link under ``prefix`` (a file system label is probed)."""
        if prefix.endswith(b"by-partuuid/"):
            return self.guid
        if prefix.endswith(b"by-partlabel/"):
            return cl.devnode_escape(self.label)
        return cl.devnode_escape(self.fs_label() or b"")

    def by_flatcar(self, value: bytes) -> bool:
        """Whether Flatcar's early init finds this partition for ``value`` (``PARTUUID=``, ...)."""
        if value.startswith(b"PARTUUID="):
            return value[len(b"PARTUUID=") :].lower() == self.guid
        if value.startswith(b"PARTLABEL="):
            return value[len(b"PARTLABEL=") :] == self.label
        if value.startswith(b"LABEL="):
            fs = self.fs_label()
            return fs is not None and value[len(b"LABEL=") :] == fs
        if value.startswith(b"UUID="):
            return False
        return self.by_path(value)


def _probe_label(disk: str, entry: Partition, sector: int) -> bytes | None:
    from piccolod import run

    offset = entry.first_lba * sector
    size = (entry.last_lba - entry.first_lba + 1) * sector
    argv = ["blkid", "-p", "-o", "value", "-s", "LABEL", "-O", str(offset), "-S", str(size), disk]
    try:
        done = run.run(argv, BLKID_SECONDS, run.base_env())
    except (OSError, run.ChildTimeout):
        return None
    label = done.stdout[:-1] if done.stdout.endswith(b"\n") else done.stdout
    if done.returncode != 0 or not _LABEL.fullmatch(label.decode("latin-1")):
        return None
    return label


def _reading(value: cl.Reading, who: str) -> bytes:
    if value is cl.AMBIGUOUS:
        raise SlotError(f"the kernel command line has no single reading for {who}")
    if not isinstance(value, bytes) or not value:
        raise SlotError(f"the kernel command line names no /usr for {who}")
    return value


def _show(value: bytes) -> str:
    return printable(value.decode("utf-8", "backslashreplace"), 200)


def check_cmdline(line: bytes, named: _Named) -> None:
    """Raise :class:`SlotError` unless both readings of ``line`` name the booted partition."""
    systemd = _reading(cl.usr_what(line), "systemd (mount.usr=)")
    flatcar = _reading(cl.flatcar_usr(line), "Flatcar's early init (mount.usr= or usr=)")
    where = f"partition {named.entry.number} ({named.entry.name})"
    mapper = named.usr.mapper
    if mapper is not None:
        dm = b"/dev/mapper/" + mapper.encode("utf-8", "surrogateescape")
        for who, what in (("systemd", systemd), ("Flatcar's early init", flatcar)):
            if what != dm:
                raise SlotError(
                    f"/usr is mounted through {_show(dm)}, but {who} reads mount.usr={_show(what)}"
                )
        verity = _reading(cl.flatcar_verity_usr(line), "dm-verity (verity.usr=)")
        if not named.by_flatcar(verity):
            raise SlotError(f"verity.usr={_show(verity)} does not name {where}, the one under {_show(dm)}")
        return
    if not named.by_path(systemd):
        raise SlotError(f"systemd mounts {_show(systemd)} as /usr, which is not {where}")
    if not named.by_flatcar(flatcar):
        raise SlotError(f"Flatcar's early init mounts {_show(flatcar)} as /usr, which is not {where}")


# --- the booted slot ----------------------------------------------------------------------------------


def verify(table: Table, usr: UsrPartition, line: bytes) -> Partition:
    """The GPT entry of the booted partition, once every rule of the module docstring but bit 56 holds."""
    where = f"{table.disk}: partition {usr.number}"
    entry = next((p for p in table.partitions if p.number == usr.number), None)
    if entry is None:
        raise SlotError(f"{where} is not in its GPT")
    if entry.type_guid != FLATCAR_USR_TYPE:
        raise SlotError(
            f"{where} ({entry.name or 'unlabelled'}) is of type {entry.type_guid}, not a Flatcar /usr slot"
        )
    if not _LABEL.fullmatch(entry.name):
        raise SlotError(f"{where} has a label that is empty or not printable ASCII ({entry.name!r})")
    twins = [p.number for p in table.partitions if p.type_guid == FLATCAR_USR_TYPE and p.name == entry.name]
    if len(twins) > 1:
        raise SlotError(
            f"{table.disk}: partitions {' and '.join(map(str, twins))} are both {entry.name}: "
            "which slot is which is ambiguous"
        )
    if usr.start is not None and usr.size is not None:
        scale = table.sector_size // 512
        start, size = entry.first_lba * scale, (entry.last_lba - entry.first_lba + 1) * scale
        if (usr.start, usr.size) != (start, size):
            raise SlotError(
                f"{where}: the kernel mounted sectors {usr.start}+{usr.size}, "
                f"the GPT entry says {start}+{size}"
            )
    check_cmdline(line, _Named(usr, entry, table.sector_size))
    return entry


def detect(cmdline: str | Path, usr_device: str = AUTO, **where: Path) -> BootSlot:
    """Find and verify the booted slot; never raises (errors land in ``BootSlot.error``).

    ``usr_device`` is ``auto`` or an override of the mount lookup (:func:`piccolod.usrmount.find`);
    ``where`` passes ``mountinfo``/``sys_root``/``dev_root`` to it (tests point them at a tree).
    """
    try:
        line = cl.read(cmdline)
    except cl.CmdlineError as e:
        return BootSlot(None, None, None, SlotState.UNKNOWN, error=str(e))
    try:
        usr = find(usr_device, **where)
    except UsrError as e:
        return BootSlot(None, None, None, SlotState.UNKNOWN, error=str(e))
    try:
        table = read_table(usr.disk)
    except GptError as e:
        why = _gpt_error(e, usr.disk)
        return BootSlot(
            None, usr.disk, None, SlotState.UNKNOWN, error=why, number=usr.number, found=usr.found
        )
    read = BootSlot(
        None, usr.disk, None, SlotState.UNKNOWN, slot_rows(table, None), number=usr.number, found=usr.found,
        gpt_header=table.header, gpt_header_lba=table.header_lba, gpt_primary_error=table.primary_error,
        gpt_backup_error=table.backup_error, gpt_source=table.source,
    )  # fmt: skip
    try:
        entry = verify(table, usr, line)
    except SlotError as e:
        return replace(read, error=str(e))
    partuuid = str(entry.unique_guid)
    state = SlotState.MARKED if entry.successful else SlotState.UNMARKED
    return replace(
        read, partuuid=partuuid, name=slot_name(entry), state=state, rows=slot_rows(table, partuuid)
    )


def _gpt_error(e: GptError, disk: str) -> str:
    cause = e.__cause__
    if isinstance(cause, OSError) and cause.errno in (errno.EPERM, errno.EACCES):
        name = errno.errorcode.get(cause.errno or 0, "?")
        why = f"{cause.strerror} ({name}; is this device type allowed by the unit's DeviceAllow=?)"
        return f"cannot open the boot disk {disk}: {why}"
    return str(e)


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
    if slot.found:
        lines.append(printable(f"found: {slot.found}"))
    if slot.gpt_note:
        lines.append(printable(slot.gpt_note))
    if slot.error:
        lines.append(printable(f"error: {slot.error}"))
    return "\n".join(lines)
