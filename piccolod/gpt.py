"""Read a GUID Partition Table directly from a disk or disk image (read-only; no writer), trusting
nothing it cannot verify.

Layout per the UEFI specification (chapter "GUID Partition Table (GPT) Disk Layout"): the primary header
at LBA 1 (signature ``EFI PART``, CRC32 over ``HeaderSize`` bytes with its own CRC field zeroed), the
partition entry array at ``PartitionEntryLBA`` (CRC32 over ``NumberOfPartitionEntries *
SizeOfPartitionEntry`` bytes), and a backup header (normally the disk's last LBA) with its own entry array
before it. GUIDs are stored mixed-endian (``bytes_le``).

**Each copy is checked in full** before anything of it is used: signature, revision 1.x, header size
(92 bytes up to one sector), header CRC, ``MyLBA`` where it was read, ``AlternateLBA`` on the disk, a
usable range inside the disk, an entry array of 128-4096-byte entries and at most 16 MiB that lies on the
disk and outside the headers, the entry array's CRC, every used entry's LBAs inside the usable range, and
no unique partition GUID used twice. Every read is bounded by those limits and the disk's size, so a
corrupt table costs at most a few reads of at most 16 MiB, and whatever is wrong ends as one
:class:`GptError` naming the disk and the reason.

**Which copy is used, and why** (:attr:`Table.source` says it in words):

1. both copies valid and in agreement (same disk GUID, usable range, entry geometry and used entries,
   each pointing at the other): the primary;
2. both valid but different: **neither** (``GptError``: the copies disagree, for example a write that
   reached one copy only). The slot state is then unknown: the gate fails closed and never reboots;
3. the primary valid, the backup unusable: the primary (the backup is only a copy of it);
4. the primary header unusable (no signature, bad CRC, impossible fields): the backup, if it is valid
   and sits at the disk's last LBA pointing back at LBA 1, as firmware, GRUB and ``cgpt repair`` do;
5. the primary header valid but its entry array unusable: the backup only if it matches what the
   primary header still vouches for (disk GUID, usable range, entry geometry and the entry array's CRC).
   A backup that differs is stale or foreign: ``GptError``;
6. neither copy valid: ``GptError`` naming both problems.

So the reader never reports slot state that only a damaged or contradicted copy supports.

The 64-bit attribute field carries the update slot state that GRUB's ``gptprio`` and Flatcar's
``cgpt``/``flatcar-setgoodroot`` use (docs/flatcar.md): priority in bits 48-51, tries in bits 52-55,
successful in bit 56.
"""

from __future__ import annotations

import os
import stat
import struct
import uuid
import zlib
from dataclasses import dataclass

SIGNATURE = b"EFI PART"
SECTOR_SIZES = (512, 4096)
FLATCAR_USR_TYPE = uuid.UUID("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6")
UNUSED_TYPE = uuid.UUID(int=0)

# Header fields (UEFI spec, table "GPT Header"), little-endian, from offset 0 of the header's LBA.
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
MAX_ENTRIES_BYTES = 16 * 1024 * 1024
MIN_ENTRY_SIZE, MAX_ENTRY_SIZE = 128, 4096


class GptError(Exception):
    """The disk cannot be read or holds no trustworthy GPT. ``str()`` names the disk and what is wrong;
    ``found_gpt`` says whether a GPT was there at all (corrupt or contradictory, rather than absent)."""

    def __init__(self, message: str, *, found_gpt: bool = False) -> None:
        super().__init__(message)
        self.found_gpt = found_gpt


def priority(attributes: int) -> int:
    """GPT attribute bits 48-51: the slot's boot priority (0 = never boot)."""
    return (attributes >> 48) & 0xF


def tries(attributes: int) -> int:
    """GPT attribute bits 52-55: boot attempts left before the slot is skipped."""
    return (attributes >> 52) & 0xF


def successful(attributes: int) -> bool:
    """GPT attribute bit 56: the slot has been marked good (by update_engine via setgoodroot)."""
    return bool((attributes >> 56) & 1)


@dataclass(frozen=True)
class Partition:
    """One used entry of the partition array; ``number`` is 1-based as in ``/dev/sdaN``."""

    number: int
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int
    name: str

    @property
    def priority(self) -> int:
        return priority(self.attributes)

    @property
    def tries(self) -> int:
        return tries(self.attributes)

    @property
    def successful(self) -> bool:
        return successful(self.attributes)


@dataclass(frozen=True)
class Table:
    """A validated GPT: disk GUID, sector size and the used partition entries in number order."""

    disk: str
    disk_guid: uuid.UUID
    sector_size: int
    partitions: tuple[Partition, ...]
    header: str = "primary"  # or "backup": the copy the partitions were read from
    header_lba: int = 1
    primary_error: str | None = None  # why the primary copy was not used
    backup_error: str | None = None  # why the backup copy could not confirm it

    @property
    def source(self) -> str:
        """Which copy, and why, in words."""
        where = f"{self.header} header at LBA {self.header_lba}"
        if self.header == "backup":
            return f"{where} (primary unusable: {self.primary_error})"
        if self.backup_error:
            return f"{where} (backup unusable: {self.backup_error})"
        return f"{where} (backup agrees)"

    def by_partuuid(self, partuuid: str | uuid.UUID) -> Partition | None:
        want = partuuid if isinstance(partuuid, uuid.UUID) else _parse_uuid(partuuid)
        return next((p for p in self.partitions if p.unique_guid == want), None)


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


class _Unusable(Exception):
    """One GPT copy is unusable; ``signature``: whether a GPT header was there at all; ``header``: a
    CRC-valid header of it, when only its entry array is bad."""

    def __init__(self, reason: str, *, signature: bool = True, header: _Header | None = None) -> None:
        super().__init__(reason)
        self.signature = signature
        self.header = header


@dataclass(frozen=True)
class _Header:
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: uuid.UUID
    entries_lba: int
    entries: int
    entry_size: int
    entries_crc: int


@dataclass(frozen=True)
class _Copy:
    header: _Header
    partitions: tuple[Partition, ...]


class _Disk:
    """Bounded reads from an open disk: every read lies inside the disk, or is refused."""

    def __init__(self, fd: int, name: str, size: int, sector: int) -> None:
        self.fd = fd
        self.name = name
        self.size = size
        self.sector = sector
        self.lbas = size // sector

    def read(self, lba: int, length: int) -> bytes:
        offset = lba * self.sector
        if lba < 0 or length < 0 or offset + length > self.size:
            raise _Unusable(f"{length} bytes at LBA {lba} lie beyond the disk's end ({self.size} bytes)")
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as e:
            raise _Unusable(f"cannot read {length} bytes at LBA {lba}: {e.strerror}") from e
        if len(data) != length:
            raise _Unusable(f"short read: {len(data)} of {length} bytes at LBA {lba}")
        return data


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _header(disk: _Disk, lba: int) -> _Header:
    """The header at ``lba``, checked on its own and against the disk's geometry."""
    try:
        raw = disk.read(lba, disk.sector)
    except _Unusable as e:
        raise _Unusable(str(e), signature=False) from None
    if raw[:8] != SIGNATURE:
        raise _Unusable(f"no GPT header at LBA {lba}", signature=False)
    (_sig, revision, size, crc, _reserved, my_lba, alt_lba, first, last, guid, entries_lba, count, entry_size,
     entries_crc) = _HEADER.unpack_from(raw)  # fmt: skip
    if not _HEADER.size <= size <= disk.sector:
        raise _Unusable(f"GPT header size {size} at LBA {lba} is invalid")
    check = bytearray(raw[:size])
    check[16:20] = b"\0\0\0\0"
    if _crc(bytes(check)) != crc:
        raise _Unusable(f"GPT header CRC32 mismatch at LBA {lba} (corrupt header)")
    if revision >> 16 != 1:
        raise _Unusable(f"GPT header at LBA {lba} has revision 0x{revision:08x}, not 1.x")
    if my_lba != lba:
        raise _Unusable(f"GPT header at LBA {lba} claims LBA {my_lba}")
    last_lba = disk.lbas - 1
    if not 1 <= alt_lba <= last_lba or alt_lba == lba:
        raise _Unusable(
            f"GPT header at LBA {lba} names its other copy at LBA {alt_lba} (the disk has {disk.lbas} LBAs)"
        )
    if not 2 <= first <= last < last_lba:
        raise _Unusable(f"GPT header at LBA {lba} has an impossible usable range {first}-{last}")
    if (
        not MIN_ENTRY_SIZE <= entry_size <= MAX_ENTRY_SIZE
        or entry_size % 8
        or count * entry_size > MAX_ENTRIES_BYTES
    ):
        raise _Unusable(f"GPT entry array geometry invalid ({count} x {entry_size} bytes)")
    array_lbas = -(-count * entry_size // disk.sector)
    array_end = entries_lba + array_lbas - 1
    if entries_lba < 2 or array_end >= disk.lbas or (entries_lba <= lba <= array_end and array_lbas):
        raise _Unusable(f"GPT entry array at LBA {entries_lba} ({array_lbas} sectors) is not on the disk")
    if first <= array_end and entries_lba <= last and array_lbas:
        raise _Unusable(f"GPT entry array at LBA {entries_lba} overlaps the usable range {first}-{last}")
    return _Header(my_lba, alt_lba, first, last, uuid.UUID(bytes_le=guid), entries_lba, count, entry_size,
                   entries_crc)  # fmt: skip


def _entries(disk: _Disk, h: _Header) -> tuple[Partition, ...]:
    """The used entries of the array ``h`` describes, each checked; raises ``_Unusable`` (with ``h``)."""
    try:
        array = disk.read(h.entries_lba, h.entries * h.entry_size)
    except _Unusable as e:
        raise _Unusable(str(e), header=h) from None
    if _crc(array) != h.entries_crc:
        raise _Unusable(
            f"GPT partition entry array CRC32 mismatch at LBA {h.entries_lba} (corrupt entries)", header=h
        )
    parts: list[Partition] = []
    seen: dict[uuid.UUID, int] = {}
    for i in range(h.entries):
        type_b, uniq_b, first, last, attrs, name_b = _ENTRY.unpack_from(array, i * h.entry_size)
        type_guid = uuid.UUID(bytes_le=type_b)
        if type_guid == UNUSED_TYPE:
            continue
        number = i + 1
        if not h.first_usable <= first <= last <= h.last_usable:
            raise _Unusable(
                f"partition {number} spans LBA {first}-{last}, outside the usable range "
                f"{h.first_usable}-{h.last_usable}",
                header=h,
            )
        unique = uuid.UUID(bytes_le=uniq_b)
        if unique in seen:
            raise _Unusable(
                f"partitions {seen[unique]} and {number} share the unique GUID {unique}", header=h
            )
        seen[unique] = number
        name = name_b.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(Partition(number, type_guid, unique, first, last, attrs, name))
    return tuple(parts)


def _copy(disk: _Disk, lba: int) -> _Copy:
    h = _header(disk, lba)
    return _Copy(h, _entries(disk, h))


def _differences(primary: _Header, backup: _Header) -> list[str]:
    """What a valid backup header says differently from a valid primary one (pointers included)."""
    out = []
    if primary.disk_guid != backup.disk_guid:
        out.append(f"disk GUID {primary.disk_guid} vs {backup.disk_guid}")
    if (primary.first_usable, primary.last_usable) != (backup.first_usable, backup.last_usable):
        out.append(
            f"usable range {primary.first_usable}-{primary.last_usable} vs "
            f"{backup.first_usable}-{backup.last_usable}"
        )
    if (primary.entries, primary.entry_size) != (backup.entries, backup.entry_size):
        out.append(
            f"entry array {primary.entries}x{primary.entry_size} vs {backup.entries}x{backup.entry_size}"
        )
    if primary.alternate_lba != backup.my_lba or backup.alternate_lba != primary.my_lba:
        out.append(
            f"they point at LBA {primary.alternate_lba} and LBA {backup.alternate_lba}, not at each other"
        )
    return out


def _agree(primary: _Copy, backup: _Copy) -> list[str]:
    out = _differences(primary.header, backup.header)
    if not out and primary.partitions != backup.partitions:
        diff = sorted(
            {p.number for p in primary.partitions} ^ {p.number for p in backup.partitions}
            | {a.number for a, b in zip(primary.partitions, backup.partitions, strict=False) if a != b}
        )
        out.append(f"partition entries differ (partition {', '.join(map(str, diff[:4]))})")
    return out


def _choose(disk: _Disk) -> Table:
    """Apply the rules of the module docstring to this sector size; ``_Unusable`` when no GPT is here."""
    try:
        primary: _Copy | None = _copy(disk, 1)
        primary_error: _Unusable | None = None
    except _Unusable as e:
        primary, primary_error = None, e
    last = disk.lbas - 1
    backup_lba = primary.header.alternate_lba if primary is not None else last
    try:
        backup: _Copy | None = _copy(disk, backup_lba) if backup_lba > 1 else None
        backup_error = None if backup_lba > 1 else _Unusable("disk too small", signature=False)
    except _Unusable as e:
        backup, backup_error = None, e
    if primary is not None:
        if backup is not None:
            differ = _agree(primary, backup)
            if differ:
                raise _Unusable(f"the primary and backup GPT disagree: {'; '.join(differ)}")
        return _table(disk, primary, "primary", backup_error=str(backup_error) if backup_error else None)
    assert primary_error is not None
    if backup is None:
        assert backup_error is not None
        raise _Unusable(
            f"no valid GPT: primary: {primary_error}; backup: {backup_error}",
            signature=primary_error.signature or backup_error.signature,
        )
    if backup.header.my_lba != last or backup.header.alternate_lba != 1:
        raise _Unusable(
            f"primary unusable ({primary_error}) and the backup at LBA {backup.header.my_lba} is not where "
            f"a backup belongs (last LBA {last}, pointing at LBA 1)"
        )
    vouched = primary_error.header  # a CRC-valid primary header whose entry array is bad
    if vouched is not None:
        differ = _differences(vouched, backup.header)
        if vouched.entries_crc != backup.header.entries_crc:
            differ.append("the backup's entry array is not the one the primary header describes (stale?)")
        if differ:
            raise _Unusable(
                f"primary entries unusable ({primary_error}) and the backup does not match the primary "
                f"header: {'; '.join(differ)}"
            )
    return _table(disk, backup, "backup", primary_error=str(primary_error))


def _table(
    disk: _Disk, copy: _Copy, which: str, *, primary_error: str | None = None, backup_error: str | None = None
) -> Table:
    return Table(
        disk.name,
        copy.header.disk_guid,
        disk.sector,
        copy.partitions,
        header=which,
        header_lba=copy.header.my_lba,
        primary_error=primary_error,
        backup_error=backup_error,
    )


def read_table(disk: str | os.PathLike[str]) -> Table:
    """Read and check the GPT of ``disk`` (a block device or an image file); see the module docstring.

    Tries 512- and 4096-byte sectors. Raises :class:`GptError` naming the disk and the problem, and
    nothing else.
    """
    name = os.fspath(disk)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise GptError(f"{name}: cannot open: {e.strerror}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise GptError(f"{name}: not a disk or a disk image")
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            raise GptError(f"{name}: cannot find its size: {e.strerror}") from e
        errors: list[_Unusable] = []
        for sector in SECTOR_SIZES:
            if size < 3 * sector:
                errors.append(_Unusable(f"too short for a GPT: {size} bytes", signature=False))
                continue
            try:
                return _choose(_Disk(fd, name, size, sector))
            except _Unusable as e:
                if e.signature:  # a GPT of this sector size, but untrustworthy: that is the story
                    raise GptError(f"{name}: {e}", found_gpt=True) from e
                errors.append(e)
        raise GptError(f"{name}: {errors[0]}")
    except (ValueError, OverflowError, struct.error, MemoryError) as e:  # a bug, but never a traceback
        raise GptError(f"{name}: unreadable GPT ({type(e).__name__}: {e})") from e
    finally:
        os.close(fd)
