"""piccolod.gpt against images written by the real sgdisk and read back by cgpt (raw attribute values),
including the fall-back to the backup GPT when the primary copy is corrupt."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from piccolod.gpt import FLATCAR_USR_TYPE, GptError, priority, read_table, successful, tries
from tests.fixtures.gptdisk import USR_A, USR_B, corrupt, install_update, set_attrs


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
