"""A seeded mutation fuzz of the GPT reader over thousands of damaged sgdisk-made images.

The image is a small Flatcar layout made once by the real ``sgdisk`` (USR-B installed and not yet
marked, in both copies). Each round damages a copy of it in memory, one to three times, in ways the
reader must judge rather than trust: random bytes anywhere in either copy, header or entry fields set to
extreme values (with the CRCs left stale or recomputed, so the fields themselves must be checked),
copied GUIDs, a copy made to say "USR-B is marked" (validly), whole sectors zeroed, the disk truncated.

The contract, checked every round:

- ``read_table`` returns a table or raises :class:`GptError`, nothing else, and never through its
  last-resort guard (a message with "unreadable GPT (" would be a bug);
- it takes at most :data:`ROUND_SECONDS`, and the whole run stays under :data:`PEAK_BYTES` of Python
  memory;
- it says USR-B is **marked** only from a copy that was deliberately marked (no other damage sets that
  bit), and only when the other copy agrees or is unusable: two valid copies that disagree are never
  read (a stale backup behind a damaged primary is pinned down by its own regression test in
  ``test_gpt.py``, where the primary header still vouches for its entries);
- it reads the backup only when the primary was touched;
- what it returns from a copy that was only corrupted (bytes flipped or zeroed, CRCs left stale) or
  marked is exactly the original table or the marked one: corrupt data is never passed on.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from piccolod.gpt import GptError, read_table
from tests.fixtures.gptdisk import (
    ENTRY_FIELDS,
    HEADER_FIELDS,
    SECTOR,
    USR_A,
    USR_B,
    USR_TYPE,
    edit_bytes,
    slot_bits,
)

SEED = 20_261_130
ROUNDS = 3000
ROUND_SECONDS = 0.5
PEAK_BYTES = 64 * 1024 * 1024
IMAGE_SECTORS = 512  # 256 KiB: headers, two 32-sector entry arrays, six small partitions

INTERESTING = (0, 1, 2, 33, 34, 127, 128, 511, 512, IMAGE_SECTORS - 1, IMAGE_SECTORS, IMAGE_SECTORS + 1,
               (1 << 31) - 1, 1 << 31, (1 << 32) - 1, (1 << 32), 1 << 63, (1 << 64) - 1)  # fmt: skip


def _sgdisk_image(path: Path) -> bytes:
    """Flatcar's partition numbers, labels and types, packed tightly (``-a 1``) into 256 KiB."""
    sgdisk = shutil.which("sgdisk")
    assert sgdisk, "sgdisk not found: apt-get install gdisk"
    with path.open("wb") as f:
        f.truncate(IMAGE_SECTORS * SECTOR)
    layout = ((1, "EFI-SYSTEM", "+16", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", None),
              (2, "BIOS-BOOT", "+8", "21686148-6449-6e6f-744e-656564454649", None),
              (3, "USR-A", "+32", USR_TYPE, USR_A), (4, "USR-B", "+32", USR_TYPE, USR_B),
              (6, "OEM", "+16", "0fc63daf-8483-4772-8e79-3d69d8477de4", None),
              (9, "ROOT", "0", "3884dd41-8582-4404-b9a8-e9b84f2df50e", None))  # fmt: skip
    argv = [sgdisk, "--clear", "-a", "1"]
    for num, label, size, typ, guid in layout:
        argv += [f"-n{num}:0:{size}", f"-t{num}:{typ}", f"-c{num}:{label}"] + (
            [f"-u{num}:{guid}"] if guid else []
        )
    # USR-A marked and booted before; USR-B just installed: priority 2, one try, not successful.
    argv += ["-A3:set:56", "-A3:set:48", "-A4:set:49", "-A4:set:52", str(path)]
    subprocess.run(argv, check=True, capture_output=True)
    return path.read_bytes()


@dataclass
class Damage:
    """What a round did: the copies it ``marked`` (USR-B successful, validly), the copies it ``touched``
    in any way (marking included), and a log for the failure message."""

    marked: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)
    edited: set[str] = field(default_factory=set)  # fields set with the CRCs recomputed: maybe still valid
    truncated: int | None = None
    log: list[str] = field(default_factory=list)


def _copy_region(size: int, which: str) -> tuple[int, int]:
    """Byte range of a copy: its header sector and its 32-sector entry array."""
    lbas = size // SECTOR
    if which == "primary":
        return SECTOR, 34 * SECTOR
    return (lbas - 33) * SECTOR, lbas * SECTOR


def _flip_bytes(rng: random.Random, data: bytearray, which: str, d: Damage) -> None:
    start, end = _copy_region(len(data), which)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(start, end)
        data[at] ^= rng.randrange(1, 256)
    d.touched.add(which)
    d.log.append(f"flip bytes in {which}")


def _header_field(rng: random.Random, data: bytearray, which: str, d: Damage) -> None:
    name = rng.choice([n for n in HEADER_FIELDS if n != "signature"])
    _off, fmt = HEADER_FIELDS[name]
    if fmt == "16s":
        value: int | bytes = uuid.UUID(int=rng.getrandbits(128)).bytes_le
    else:
        bits = struct.calcsize(fmt) * 8
        value = rng.choice([v for v in INTERESTING if v < 1 << bits] + [rng.getrandbits(bits)])
    fix = rng.random() < 0.7
    edit_bytes(data, which, header={name: value}, fix_crcs=fix)
    d.touched.add(which)
    if fix:
        d.edited.add(which)
    d.log.append(f"{which} header {name}={value!r} crc {'fixed' if fix else 'stale'}")


def _entry_field(rng: random.Random, data: bytearray, which: str, d: Damage) -> None:
    number = rng.choice([1, 2, 3, 4, 6, 9])
    # USR-B's attributes are _mark's business: any other edit there could mark it by chance.
    name = rng.choice([n for n in ENTRY_FIELDS if not (number == 4 and n == "attributes")])
    value: int | bytes
    if name == "unique":
        value = uuid.UUID(rng.choice([USR_A, USR_B])).bytes_le  # a duplicate, or the same
    elif name == "type":
        value = rng.choice([bytes(16), uuid.UUID(USR_TYPE).bytes_le, uuid.uuid4().bytes_le])
    elif name == "name":
        value = rng.choice(["USR-A", "USR-B", "ROOT", "\x1b[2J"]).encode("utf-16-le")
    else:
        value = rng.choice([*INTERESTING, rng.getrandbits(64)])
    fix = rng.random() < 0.7
    edit_bytes(data, which, entries={(number, name): value}, fix_crcs=fix)
    d.touched.add(which)
    if fix:
        d.edited.add(which)
    d.log.append(f"{which} entry {number} {name}={value!r} crc {'fixed' if fix else 'stale'}")


def _mark(rng: random.Random, data: bytearray, which: str, d: Damage) -> None:
    slot_bits(data, which, 4, priority=2, tries=0, successful=True)
    d.marked.add(which)
    d.touched.add(which)
    d.log.append(f"{which} marks USR-B")


def _zero_sector(rng: random.Random, data: bytearray, which: str, d: Damage) -> None:
    start, end = _copy_region(len(data), which)
    at = rng.randrange(start, end, SECTOR)
    data[at : at + SECTOR] = bytes(SECTOR)
    d.touched.add(which)
    d.log.append(f"zero a sector of {which}")


def _truncate(rng: random.Random, data: bytearray, which: str, d: Damage) -> None:
    keep = rng.choice([rng.randrange(0, len(data)), rng.randrange(0, len(data) // SECTOR) * SECTOR])
    del data[keep:]
    d.touched.update(("primary", "backup"))
    d.truncated = keep
    d.log.append(f"truncate to {keep}")


Mutation = Callable[[random.Random, bytearray, str, Damage], None]
MUTATIONS: tuple[tuple[Mutation, float], ...] = (
    (_flip_bytes, 3),
    (_header_field, 4),
    (_entry_field, 4),
    (_zero_sector, 1),
    (_truncate, 0.5),
)


def _damage(rng: random.Random, base: bytes) -> tuple[bytearray, Damage]:
    """Mark either copy or both (or neither) first, then damage: zero to three mutations."""
    data, d = bytearray(base), Damage()
    for which in ("primary", "backup"):
        if rng.random() < 0.4:
            _mark(rng, data, which, d)
    funcs, weights = zip(*MUTATIONS, strict=True)
    for _ in range(rng.randint(0 if d.marked else 1, 3)):
        mutate = rng.choices(funcs, weights)[0]
        if d.truncated is not None:
            break  # edits by LBA make no sense on a truncated image
        try:
            mutate(rng, data, rng.choice(["primary", "backup"]), d)
        except (struct.error, OverflowError, ValueError, IndexError):
            d.log.append(f"{mutate.__name__} did not apply")  # fields an earlier mutation made absurd
    return data, d


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gptfuzz") / "base.img"
    data = _sgdisk_image(path)
    assert read_table(path).source == "primary header at LBA 1 (backup agrees)"
    return data


def test_the_reader_holds_its_contract_over_thousands_of_damaged_images(tmp_path: Path, base: bytes) -> None:
    img = tmp_path / "fuzz.img"
    img.write_bytes(base)
    original = read_table(img).partitions
    marked = bytearray(base)
    for which in ("primary", "backup"):
        slot_bits(marked, which, 4, priority=2, tries=0, successful=True)
    img.write_bytes(marked)
    after_marking = read_table(img).partitions
    rng = random.Random(SEED)
    outcomes = {"error": 0, "primary": 0, "backup": 0, "marked": 0}
    slowest = 0.0
    tracemalloc.start()
    try:
        for round_ in range(ROUNDS):
            data, d = _damage(rng, base)
            img.write_bytes(data)
            started = time.perf_counter()
            try:
                table = read_table(img)
            except GptError as e:
                assert "unreadable GPT (" not in str(e), (round_, d.log, str(e))
                assert str(e).startswith(f"{img}: ") and "\n" not in str(e)
                outcomes["error"] += 1
                continue
            finally:
                slowest = max(slowest, time.perf_counter() - started)
            outcomes[table.header] += 1
            if table.header not in d.edited:
                assert table.partitions in (original, after_marking), (round_, d.log, table.source)
            if table.header == "backup":
                assert "primary" in d.touched, (round_, d.log)
            usr_b = table.by_partuuid(USR_B)
            if usr_b is not None and usr_b.successful:
                outcomes["marked"] += 1
                assert table.header in d.marked, (round_, d.log, table.source)
                other = "backup" if table.header == "primary" else "primary"
                # The other copy says so too, or it was touched (and found unusable): never a valid,
                # untouched copy that says "not marked".
                assert other in d.marked or other in d.touched, (round_, d.log, table.source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert slowest < ROUND_SECONDS, slowest
    assert peak < PEAK_BYTES, peak
    # The fuzz reaches every outcome: it is not just producing errors.
    assert all(n > 50 for n in outcomes.values()), outcomes
    print(f"gpt fuzz: {ROUNDS} images, {outcomes}, slowest {slowest * 1000:.1f} ms, peak {peak >> 10} KiB")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_image_damaged_the_same_way_reads_the_same_way(base: bytes, seed: int) -> None:
    a, _ = _damage(random.Random(seed), base)
    b, _ = _damage(random.Random(seed), base)
    assert a == b and zlib.crc32(a) == zlib.crc32(b)
