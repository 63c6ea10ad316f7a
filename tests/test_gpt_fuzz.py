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
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from piccolod.gpt import GptError, read_table
from tests.fixtures.gptdisk import USR_B, slot_bits
from tests.fixtures.gptfuzz import damage, sgdisk_image

SEED = 20_261_130
ROUNDS = 3000
ROUND_SECONDS = 0.5
PEAK_BYTES = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gptfuzz") / "base.img"
    data = sgdisk_image(path)
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
            data, d = damage(rng, base)
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
    a, _ = damage(random.Random(seed), base)
    b, _ = damage(random.Random(seed), base)
    assert a == b and zlib.crc32(a) == zlib.crc32(b)
