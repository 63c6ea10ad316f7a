"""Read a GUID Partition Table directly from a disk or disk image (read-only; no writer).

Follows the UEFI specification's layout: the primary header at LBA 1 (signature ``EFI PART``, header
CRC32 over ``header_size`` bytes with its own CRC field zeroed), the partition entry array at the LBA the
header names (CRC32 over ``entries * entry_size`` bytes). GUIDs are stored mixed-endian (``bytes_le``).
When the primary header or its entry array is unusable (bad signature or CRC, unreadable), the backup
header at the disk's last LBA, with its own entry array just before it, is used instead, as firmware,
GRUB and ``cgpt repair`` do; :attr:`Table.header` says which copy was read.

The 64-bit attribute field carries the update slot state that GRUB's ``gptprio`` and Flatcar's
``cgpt``/``flatcar-setgoodroot`` use (docs/flatcar.md): priority in bits 48-51, tries in bits 52-55,
successful in bit 56.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
import zlib
from dataclasses import dataclass

SIGNATURE = b"EFI PART"
SECTOR_SIZES = (512, 4096)
FLATCAR_USR_TYPE = uuid.UUID("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6")
UNUSED_TYPE = uuid.UUID(int=0)

# Header fields after the 8-byte signature (UEFI spec, table "GPT Header").
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_MAX_ENTRIES_BYTES = 16 * 1024 * 1024


class GptError(Exception):
    """The disk cannot be read or holds no valid GPT. ``str()`` names the disk and what is wrong."""


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
    header: str = "primary"  # or "backup": the primary copy was unusable
    header_lba: int = 1
    primary_error: str | None = None  # why the primary copy was not used

    def by_partuuid(self, partuuid: str | uuid.UUID) -> Partition | None:
        want = partuuid if isinstance(partuuid, uuid.UUID) else _parse_uuid(partuuid)
        return next((p for p in self.partitions if p.unique_guid == want), None)


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def _read_at(fd: int, offset: int, size: int, disk: str) -> bytes:
    try:
        data = os.pread(fd, size, offset)
    except OSError as e:
        raise GptError(f"{disk}: cannot read {size} bytes at offset {offset}: {e.strerror}") from e
    if len(data) != size:
        raise GptError(f"{disk}: too short: wanted {size} bytes at offset {offset}, got {len(data)}")
    return data


def _crc_ok(data: bytes, expected: int) -> bool:
    return zlib.crc32(data) & 0xFFFFFFFF == expected


class _Unusable(Exception):
    """One GPT copy is unusable; ``signature`` says whether a GPT header was there at all."""

    def __init__(self, reason: str, *, signature: bool = True) -> None:
        super().__init__(reason)
        self.signature = signature


def _read_copy(fd: int, disk: str, sector: int, lba: int) -> bytes:
    try:
        return _read_at(fd, lba * sector, sector, disk)
    except GptError as e:
        raise _Unusable(str(e).removeprefix(f"{disk}: "), signature=False) from e


def _parse(fd: int, disk: str, sector: int, lba: int) -> Table:
    """The copy whose header sits at ``lba`` (1 for the primary, the last LBA for the backup)."""
    raw = _read_copy(fd, disk, sector, lba)
    if raw[:8] != SIGNATURE:
        raise _Unusable(f"no GPT header at LBA {lba} (signature {raw[:8]!r})", signature=False)
    (
        _sig,
        _revision,
        header_size,
        header_crc,
        _reserved,
        my_lba,
        _alt_lba,
        _first_usable,
        _last_usable,
        disk_guid,
        entries_lba,
        n_entries,
        entry_size,
        entries_crc,
    ) = _HEADER.unpack_from(raw)
    if not _HEADER.size <= header_size <= sector:
        raise _Unusable(f"GPT header size {header_size} at LBA {lba} is invalid")
    check = bytearray(raw[:header_size])
    check[16:20] = b"\0\0\0\0"
    if not _crc_ok(bytes(check), header_crc):
        raise _Unusable(f"GPT header CRC32 mismatch at LBA {lba} (corrupt header)")
    if my_lba != lba:
        raise _Unusable(f"GPT header at LBA {lba} claims LBA {my_lba}")
    if entry_size < _ENTRY.size or entry_size % 8 or n_entries * entry_size > _MAX_ENTRIES_BYTES:
        raise _Unusable(f"GPT entry array geometry invalid ({n_entries} x {entry_size} bytes)")
    try:
        array = _read_at(fd, entries_lba * sector, n_entries * entry_size, disk)
    except GptError as e:
        raise _Unusable(str(e).removeprefix(f"{disk}: ")) from e
    if not _crc_ok(array, entries_crc):
        raise _Unusable(f"GPT partition entry array CRC32 mismatch at LBA {entries_lba} (corrupt entries)")
    parts = []
    for i in range(n_entries):
        type_b, uniq_b, first, last, attrs, name_b = _ENTRY.unpack_from(array, i * entry_size)
        type_guid = uuid.UUID(bytes_le=type_b)
        if type_guid == UNUSED_TYPE:
            continue
        name = name_b.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, type_guid, uuid.UUID(bytes_le=uniq_b), first, last, attrs, name))
    return Table(disk, uuid.UUID(bytes_le=disk_guid), sector, tuple(parts), header_lba=lba)


def _read_either(fd: int, disk: str, sector: int, size: int) -> Table:
    """The primary copy, else the backup one; :class:`_Unusable` naming both problems if neither."""
    try:
        return _parse(fd, disk, sector, 1)
    except _Unusable as e:
        primary = e
    last = size // sector - 1
    if last <= 1:
        raise _Unusable(f"{primary}; disk too small for a backup GPT", signature=primary.signature)
    try:
        backup = _parse(fd, disk, sector, last)
    except _Unusable as e:
        raise _Unusable(
            f"no valid GPT: primary: {primary}; backup: {e}", signature=primary.signature or e.signature
        ) from e
    return dataclasses.replace(backup, header="backup", primary_error=str(primary))


def read_table(disk: str | os.PathLike[str]) -> Table:
    """Read and CRC-check the GPT of ``disk`` (a block device or an image file).

    The primary copy, or the backup one when the primary is unusable; tries 512- and 4096-byte
    sectors. Raises :class:`GptError` naming the disk and the problem (of both copies).
    """
    name = os.fspath(disk)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise GptError(f"{name}: cannot open: {e.strerror}") from e
    try:
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            raise GptError(f"{name}: cannot find its size: {e.strerror}") from e
        errors: list[_Unusable] = []
        for sector in SECTOR_SIZES:
            try:
                return _read_either(fd, name, sector, size)
            except _Unusable as e:
                if e.signature:  # a GPT of this sector size, but corrupt: that is the story
                    raise GptError(f"{name}: {e}") from e
                errors.append(e)
        raise GptError(f"{name}: {errors[0]}")
    finally:
        os.close(fd)
