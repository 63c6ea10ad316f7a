"""piccolod.gpt against images written by the real sgdisk and read back by cgpt (raw attribute values),
including the fall-back to the backup GPT when the primary copy is corrupt."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from piccolod.gpt import FLATCAR_USR_TYPE, GptError, priority, read_table, successful, tries
from tests.fixtures.gptdisk import USR_A, USR_B, corrupt, edit_copy, install_update, set_attrs, set_attrs_in


def _cgpt_attr(img: Path, number: int) -> int:
    """``cgpt show -A``: the raw upper 16 attribute bits, as cgpt itself decodes them."""
    cgpt = shutil.which("cgpt")
    assert cgpt, "cgpt not found: apt-get install cgpt"
    out = subprocess.run(
        [cgpt, "show", "-i", str(number), "-A", str(img)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip(), 0)


def test_reads_flatcar_layout(flatcar_disk: Path) -> None:
    table = read_table(flatcar_disk)
    assert [p.number for p in table.partitions] == [1, 2, 3, 4, 6, 9]
    assert [p.name for p in table.partitions] == ["EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM", "ROOT"]
    a, b = table.partitions[2], table.partitions[3]
    assert a.type_guid == b.type_guid == FLATCAR_USR_TYPE
    assert (str(a.unique_guid), str(b.unique_guid)) == (USR_A, USR_B)
    assert (a.priority, a.tries, a.successful) == (1, 0, True)
    assert (b.priority, b.tries, b.successful) == (0, 0, False)
    assert table.by_partuuid(USR_B.upper()) == b
    assert table.by_partuuid("not-a-uuid") is None
    assert a.first_lba < a.last_lba < b.first_lba


def test_every_attribute_bit_sgdisk_sets_matches_cgpt(flatcar_disk: Path) -> None:
    # One sgdisk call sets a spread of bits on both USR partitions (each sgdisk write costs ~1 s).
    bits_a, bits_b = (48, 50, 53, 55, 56, 60, 63, 2), (49, 51, 52, 54, 0)
    argv = ["sgdisk", "-A3:clear:48", "-A3:clear:56"]
    argv += [f"-A3:set:{b}" for b in bits_a] + [f"-A4:set:{b}" for b in bits_b] + [str(flatcar_disk)]
    subprocess.run(argv, check=True, capture_output=True)
    table = read_table(flatcar_disk)
    for number, bits in ((3, bits_a), (4, bits_b)):
        part = next(p for p in table.partitions if p.number == number)
        assert part.attributes == sum(1 << b for b in bits)
        assert part.attributes >> 48 == _cgpt_attr(flatcar_disk, number)
    a = next(p for p in table.partitions if p.number == 3)
    assert (a.priority, a.tries, a.successful) == (0b0101, 0b1010, True)
    b = next(p for p in table.partitions if p.number == 4)
    assert (b.priority, b.tries, b.successful) == (0b1010, 0b0101, False)


def test_attribute_helpers() -> None:
    attrs = (1 << 56) | (3 << 52) | (15 << 48) | 0xFFFF
    assert (priority(attrs), tries(attrs), successful(attrs)) == (15, 3, True)
    assert (priority(0), tries(0), successful(0)) == (0, 0, False)


def test_fixture_writer_keeps_gpt_valid_for_sgdisk_and_cgpt(flatcar_disk: Path) -> None:
    set_attrs(flatcar_disk, 4, priority=2, tries=1, successful=False)
    set_attrs(flatcar_disk, 3, priority=1, tries=0, successful=True)
    verify = subprocess.run(["sgdisk", "-v", str(flatcar_disk)], capture_output=True, text=True, check=True)
    assert "No problems found" in verify.stdout
    assert _cgpt_attr(flatcar_disk, 4) == 0x0012
    assert _cgpt_attr(flatcar_disk, 3) == 0x0101
    b = read_table(flatcar_disk).by_partuuid(USR_B)
    assert b is not None and (b.priority, b.tries, b.successful) == (2, 1, False)


def _read_flatcar(img: Path) -> dict[int, tuple[str, int, str]]:
    return {p.number: (str(p.unique_guid), p.attributes, p.name) for p in read_table(img).partitions}


@pytest.mark.parametrize("what", ["primary-header", "primary-entries"])
def test_corrupt_primary_falls_back_to_the_backup(flatcar_disk: Path, what: str) -> None:
    install_update(flatcar_disk, USR_A)  # both copies carry the update's slot bits
    before = read_table(flatcar_disk)
    assert (before.header, before.header_lba, before.primary_error) == ("primary", 1, None)
    corrupt(flatcar_disk, what)
    table = read_table(flatcar_disk)
    last_lba = flatcar_disk.stat().st_size // 512 - 1
    assert (table.header, table.header_lba) == ("backup", last_lba)
    expected = "GPT header CRC32 mismatch at LBA 1" if what == "primary-header" else "entry array CRC32"
    assert table.primary_error and expected in table.primary_error
    assert table.partitions == before.partitions and table.disk_guid == before.disk_guid
    b = table.by_partuuid(USR_B)
    assert b is not None and (b.priority, b.tries, b.successful) == (2, 1, False)
    if what == "primary-header":  # cgpt, too, reads the backup copy and sees the same bits
        assert _cgpt_attr(flatcar_disk, 4) == b.attributes >> 48


@pytest.mark.parametrize(
    ("primary", "backup", "message"),
    [
        ("primary-header", "backup-entries", "primary: GPT header CRC32 mismatch at LBA 1 .*backup: GPT "
         "partition entry array CRC32 mismatch at LBA 98271"),
        ("primary-entries", "backup-header", "primary: GPT partition entry array CRC32 mismatch at LBA 2 "
         ".*backup: GPT header CRC32 mismatch at LBA 98303"),
    ],
)  # fmt: skip
def test_both_copies_corrupt_is_one_clear_error(
    flatcar_disk: Path, primary: str, backup: str, message: str
) -> None:
    corrupt(flatcar_disk, primary)
    corrupt(flatcar_disk, backup)
    with pytest.raises(GptError, match=r"^\S*disk\.img: no valid GPT: " + message) as err:
        read_table(flatcar_disk)
    assert "\n" not in str(err.value)


def test_not_a_gpt_disk(tmp_path: Path) -> None:
    img = tmp_path / "blank.img"
    img.write_bytes(bytes(1 << 20))
    with pytest.raises(GptError, match=r"blank\.img: no valid GPT: primary: no GPT header at LBA 1"):
        read_table(img)


def test_short_and_missing_disks(tmp_path: Path) -> None:
    short = tmp_path / "short.img"
    short.write_bytes(b"\0" * 700)
    with pytest.raises(GptError, match=r"short\.img: too short"):
        read_table(short)
    with pytest.raises(GptError, match=r"missing\.img: cannot open: No such file"):
        read_table(tmp_path / "missing.img")


def test_unique_guids_are_mixed_endian(flatcar_disk: Path) -> None:
    raw = flatcar_disk.read_bytes()
    entry3 = raw[1024 + 2 * 128 : 1024 + 3 * 128]
    assert uuid.UUID(bytes_le=entry3[16:32]) == uuid.UUID(USR_A)
    assert entry3[16:20] == bytes.fromhex("4ac93071")  # first field little-endian on disk


# --- a reader that never trusts what it cannot verify ---------------------------------------------------

HUGE = 1 << 63


def _usr_b(img: Path) -> tuple[str, bool]:
    table = read_table(img)
    b = table.by_partuuid(USR_B)
    assert b is not None
    return table.source, b.successful


@pytest.mark.parametrize("fix_crcs", [True, False], ids=["crc-fixed", "crc-stale"])
@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("entries_lba", HUGE, "is not on the disk"),
        ("entries_lba", 1, "is not on the disk"),
        ("entries", 0xFFFFFFFF, "geometry invalid"),
        ("entry_size", 0xFFFFFFF8, "geometry invalid"),
        ("entry_size", 8, "geometry invalid"),
        ("header_size", 0xFFFFFFFF, "header size"),
        ("my_lba", HUGE, "claims LBA"),
        ("alternate_lba", HUGE, "names its other copy"),
        ("first_usable", HUGE, "impossible usable range"),
        ("last_usable", HUGE, "impossible usable range"),
        ("revision", 0x00020000, "revision"),
    ],
)
def test_an_impossible_primary_header_field_falls_back_to_a_consistent_backup(
    flatcar_disk: Path, field: str, value: int, why: str, fix_crcs: bool
) -> None:
    install_update(flatcar_disk, USR_A)  # USR-B unmarked in both copies
    edit_copy(flatcar_disk, "primary", header={field: value}, fix_crcs=fix_crcs)
    table = read_table(flatcar_disk)
    assert table.header == "backup" and table.primary_error
    assert why in table.primary_error or (not fix_crcs and "CRC32 mismatch" in table.primary_error)
    b = table.by_partuuid(USR_B)
    assert b is not None and not b.successful


@pytest.mark.parametrize(("field", "value"), [("entries_lba", HUGE), ("entries", 0xFFFFFFFF), ("my_lba", 7)])
def test_both_headers_impossible_is_one_line(flatcar_disk: Path, field: str, value: int) -> None:
    for which in ("primary", "backup"):
        edit_copy(flatcar_disk, which, header={field: value})
    with pytest.raises(GptError) as err:
        read_table(flatcar_disk)
    text = str(err.value)
    assert text.startswith(f"{flatcar_disk}: ") and "\n" not in text and "unreadable GPT (" not in text


@pytest.mark.parametrize(
    ("number", "field", "value", "why"),
    [
        (3, "first_lba", HUGE, "outside the usable range"),
        (4, "last_lba", 1, "outside the usable range"),
        (4, "unique", uuid.UUID(USR_A).bytes_le, "share the unique GUID"),
    ],
)
def test_impossible_or_ambiguous_entries_in_both_copies(
    flatcar_disk: Path, number: int, field: str, value: int | bytes, why: str
) -> None:
    for which in ("primary", "backup"):
        edit_copy(flatcar_disk, which, entries={(number, field): value})
    with pytest.raises(GptError, match=why):
        read_table(flatcar_disk)


def test_copies_that_disagree_are_neither_trusted(flatcar_disk: Path) -> None:
    """A write that reached one copy only: the backup says USR-B is marked, the primary says it is not."""
    install_update(flatcar_disk, USR_A)
    set_attrs_in(flatcar_disk, "backup", 4, priority=2, tries=0, successful=True)
    with pytest.raises(GptError, match=r"the primary and backup GPT disagree: partition entries differ"):
        read_table(flatcar_disk)
    set_attrs_in(flatcar_disk, "primary", 4, priority=2, tries=0, successful=True)  # now both say so
    assert _usr_b(flatcar_disk) == ("primary header at LBA 1 (backup agrees)", True)


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ({"disk_guid": uuid.uuid4().bytes_le}, "disk GUID"),
        ({"first_usable": 40}, "usable range"),
        ({"alternate_lba": 5}, "not at each other"),
    ],
)
def test_headers_that_differ_are_neither_trusted(
    flatcar_disk: Path, header: dict[str, int | bytes], words: str
) -> None:
    edit_copy(flatcar_disk, "backup", header=header)
    with pytest.raises(GptError, match=f"disagree: .*{words}"):
        read_table(flatcar_disk)


def test_a_broken_primary_with_a_stale_backup_that_says_marked_is_not_marked(flatcar_disk: Path) -> None:
    """The issue's case: the primary's entries are corrupt, its header still vouches for them (USR-B
    unmarked); the backup is stale and says USR-B is marked. Nothing trustworthy says "marked"."""
    install_update(flatcar_disk, USR_A)
    set_attrs_in(flatcar_disk, "backup", 4, priority=2, tries=0, successful=True)
    corrupt(flatcar_disk, "primary-entries")
    with pytest.raises(GptError, match=r"backup does not match the primary header: .*stale"):
        read_table(flatcar_disk)


def test_a_destroyed_primary_header_leaves_a_fully_consistent_backup_in_charge(flatcar_disk: Path) -> None:
    """Nothing of the primary can vouch for or against the backup: a backup that is valid, at the last
    LBA and pointing at LBA 1 is what firmware, GRUB and cgpt use, and so does the reader."""
    install_update(flatcar_disk, USR_A)
    set_attrs_in(flatcar_disk, "backup", 4, priority=2, tries=0, successful=True)
    corrupt(flatcar_disk, "primary-header")
    source, marked = _usr_b(flatcar_disk)
    assert source.startswith("backup header at LBA 98303 (primary unusable: GPT header CRC32") and marked
    edit_copy(flatcar_disk, "backup", header={"alternate_lba": 2})  # no longer pointing at LBA 1
    with pytest.raises(GptError, match="not where a backup belongs"):
        read_table(flatcar_disk)


def test_a_valid_primary_with_an_unusable_backup_is_read_and_says_so(flatcar_disk: Path) -> None:
    corrupt(flatcar_disk, "backup-header")
    table = read_table(flatcar_disk)
    assert table.header == "primary" and table.backup_error and "CRC32 mismatch" in table.backup_error
    assert table.source.startswith("primary header at LBA 1 (backup unusable: GPT header CRC32")


def test_a_grown_disk_finds_its_backup_where_the_primary_says(flatcar_disk: Path) -> None:
    """An image written to a larger disk: the backup is no longer at the last LBA, but where the
    primary header points, and the two agree."""
    before = read_table(flatcar_disk)
    with flatcar_disk.open("r+b") as f:
        f.truncate(flatcar_disk.stat().st_size + 8 * 1024 * 1024)
    after = read_table(flatcar_disk)
    assert after.partitions == before.partitions and after.source == "primary header at LBA 1 (backup agrees)"


@pytest.mark.parametrize("size", [700, 2048, 17 * 1024, 1024 * 1024, 48 * 1024 * 1024 - 512])
def test_truncated_disks_are_one_line(flatcar_disk: Path, size: int) -> None:
    with flatcar_disk.open("r+b") as f:
        f.truncate(size)
    try:
        table = read_table(flatcar_disk)
    except GptError as e:
        assert (
            str(e).startswith(f"{flatcar_disk}: ") and "\n" not in str(e) and "unreadable GPT (" not in str(e)
        )
    else:  # only the backup is gone: the primary is still valid on its own
        assert size >= 1024 * 1024 and table.header == "primary" and table.backup_error


def test_not_a_disk(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(GptError, match=r": not a disk or a disk image$"):
            read_table(path)  # and never blocks on the FIFO
