"""The guard is never more permissive than the agent: both programs on one corpus of disks and command lines.

The guard (the rendered sh script, run by ``sh`` with the machine's awk and the real ``sgdisk``) and the
agent (``piccolod.slot.detect``) read the same disk image, partition number and command line. The rule
under test: **wherever the guard says "marked", the agent says "marked" too** (the guard may say less:
it waits for the agent's token then). The corpus:

- hand-made damage of every kind issue 13 found (duplicate PARTUUIDs on USR-A, EFI and BIOS-BOOT, headers
  that differ, first > last, a wrong MyLBA, stale and one-sided copies, twin labels, wrong types, a
  4096-byte-sector disk, command lines read three ways);
- a seeded fuzz of damaged images (:mod:`tests.fixtures.gptfuzz`: bytes, header and entry fields with
  the CRCs recomputed or not, one copy marked, another partition impersonating USR-B, zeroed sectors,
  truncation), each with a booted partition and a command line drawn for it;
- seeded random command lines, which the guard's reader (the same awk as in the unit run, in its batch
  mode) must read exactly as the agent's does.

Every round is reproducible from :data:`SEED` and its index; a failing round is written out with the
command that replays it. The fast tier runs the first :data:`FAST_ROUNDS` rounds (the same seeds); the
full suite (marker ``full``) runs :data:`ROUNDS` images and :data:`CMDLINES` command lines.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from piccolod.slot import detect
from tests.fixtures.cmdline_cases import load, random_cmdline, random_cmdlines
from tests.fixtures.gptdisk import USR_A, USR_B, USR_TYPE, edit_bytes, slot_bits, write_image
from tests.fixtures.gptfuzz import DIFFERENTIAL_MUTATIONS, damage, sgdisk_image
from tests.fixtures.guard import PATH, agent_readings, guard_readings, render_guard

SEED = 20_261_213
ROUNDS = 2000
FAST_ROUNDS = 150
CMDLINES = 1500
FAST_CMDLINES = 300
WORKERS = 2
SECTOR = 512


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_guard(tmp_path_factory.mktemp("guard") / "piccolod-guard")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return sgdisk_image(tmp_path_factory.mktemp("diff") / "base.img")


@dataclass(frozen=True)
class Case:
    name: str
    image: bytes
    number: int  # the partition standing for the /usr mount
    cmdline: bytes
    log: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    case: Case
    agent: str
    guard: str
    said: str
    agent_error: str | None

    @property
    def reader(self) -> str:
        """What the guard's own GPT reader and rules concluded, before sgdisk was asked: its "booted slot"
        line, said only when everything but sgdisk's second reading held (else unknown)."""
        line = next((ln for ln in self.said.splitlines() if "piccolod-guard: booted slot: " in ln), None)
        if line is None:
            return "unknown"
        return "marked" if int(line.rsplit("attributes ", 1)[1][:2], 16) & 1 else "unmarked"

    @property
    def violation(self) -> bool:
        """The guard, or its own reader without sgdisk's second reading, says marked; the agent does not."""
        return self.agent != "marked" and "marked" in (self.guard, self.reader)


GUIDS = {1: None, 2: None, 3: USR_A, 4: USR_B, 6: None, 9: None}


def _command_line(rng: random.Random, number: int) -> bytes:
    """A command line for a boot of partition ``number``: mostly one that names it, as GRUB writes them."""
    guid = GUIDS.get(number) or str(uuid.UUID(int=rng.getrandbits(128)))
    label = {3: "USR-A", 4: "USR-B"}.get(number, "ROOT")
    forms = [
        f"mount.usr=PARTUUID={guid}",
        f"mount.usr=PARTLABEL={label}",
        f"mount.usr=/dev/disk/by-partuuid/{guid}",
        f"mount.usr=PARTUUID={guid.upper()}",
        f"mount.usr=/dev/mapper/usr verity.usr=PARTUUID={guid}",
        f"mount.usr=PARTUUID={USR_A} x\rmount.usr=PARTUUID={guid}",
        f'mount.usr=PARTUUID={guid} "mount.usr=PARTUUID={USR_A}"',
    ]
    text = rng.choices(forms, [40, 20, 10, 5, 5, 5, 5])[0].encode()
    if rng.random() < 0.1:
        text = random_cmdline(rng)
    return b"BOOT_IMAGE=/flatcar/vmlinuz-b " + text + b" rootflags=rw mount.usrflags=ro\n"


def fuzz_case(base: bytes, index: int, seed: int = SEED) -> Case:
    """Round ``index`` of the seeded fuzz: on its own seed, so any round can be replayed alone."""
    rng = random.Random(f"{seed}:{index}")
    data, d = damage(rng, base, DIFFERENTIAL_MUTATIONS)
    if rng.random() < 0.12:  # now and then a healthy disk, marked or not: the command line alone decides
        data, d.log[:] = bytearray(base), ["healthy"]
        if rng.random() < 0.5:
            slot_bits(data, "primary", 4, priority=2, tries=0, successful=True)
            slot_bits(data, "backup", 4, priority=2, tries=0, successful=True)
            d.log.append("USR-B marked")
    number = rng.choices([4, 3, 1, 2, 9], [70, 15, 5, 5, 5])[0]
    return Case(f"fuzz-{seed}-{index}", bytes(data), number, _command_line(rng, number), tuple(d.log))


def judge(case: Case, script: Path, work: Path) -> Verdict:
    work.mkdir(parents=True, exist_ok=True)
    image, cmdline = work / "disk.img", work / "cmdline"
    write_image(image, case.image)
    cmdline.write_bytes(case.cmdline)
    spec = f"image:{case.number}:{image}"
    agent = detect(cmdline, spec)
    env = {"PATH": PATH, "PICCOLOD_GUARD_CMDLINE": str(cmdline), "PICCOLOD_GUARD_USR_DEVICE": spec}
    done = subprocess.run(["sh", str(script), "state"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    last = done.stdout.splitlines()[-1] if done.stdout else ""
    guard = last.removeprefix("state: ") if last.startswith("state: ") and done.returncode == 0 else "broken"
    return Verdict(case, str(agent.state), guard, done.stdout + done.stderr, agent.error)


def run_corpus(cases: Sequence[Callable[[], Case]], script: Path, work: Path) -> list[Verdict]:
    """Judge every case, :data:`WORKERS` at a time (each in its own directory)."""

    def one(i: int) -> Verdict:
        return judge(cases[i](), script, work / str(i % (WORKERS * 4)) / str(i))

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, range(len(cases))))


def report(verdicts: list[Verdict], out: Path) -> str:
    """The failing rounds written out for replay, and a summary; empty when the guard never overstepped."""
    bad = [v for v in verdicts if v.violation or v.guard == "broken"]
    lines = []
    for v in bad[:5]:
        keep = out / v.case.name
        keep.mkdir(parents=True, exist_ok=True)
        write_image(keep / "disk.img", v.case.image)
        (keep / "cmdline").write_bytes(v.case.cmdline)
        lines.append(
            f"{v.case.name}: guard {v.guard} (its reader alone: {v.reader}), "
            f"agent {v.agent} ({v.agent_error}); "
            f"damage: {list(v.case.log)}; "
            f"cmdline {v.case.cmdline!r}\n  replay: PICCOLOD_GUARD_CMDLINE={keep}/cmdline "
            f"PICCOLOD_GUARD_USR_DEVICE=image:{v.case.number}:{keep}/disk.img sh piccolod-guard state\n"
            f"  guard said: {v.said}"
        )
    return "\n".join(lines)


def matrix(verdicts: list[Verdict]) -> Counter[tuple[str, str]]:
    return Counter((v.guard, v.agent) for v in verdicts)


def reader_matrix(verdicts: list[Verdict]) -> Counter[tuple[str, str]]:
    return Counter((v.reader, v.agent) for v in verdicts)


# --- the seeded fuzz ------------------------------------------------------------------------------------


def _fuzz(script: Path, base: bytes, tmp_path: Path, rounds: int) -> Counter[tuple[str, str]]:
    started = time.monotonic()
    cases = [functools.partial(fuzz_case, base, i) for i in range(rounds)]
    verdicts = run_corpus(cases, script, tmp_path / "work")
    took = time.monotonic() - started
    seen = matrix(verdicts)
    print(f"\nguard vs agent on {rounds} damaged images ({took:.1f}s, {WORKERS} workers): {dict(seen)}")
    print(f"the guard's reader alone (before sgdisk) vs agent: {dict(reader_matrix(verdicts))}")
    problems = report(verdicts, tmp_path / "failing")
    assert not problems, f"the guard opened where the agent would not say marked:\n{problems}"
    return seen


def test_the_guard_never_opens_where_the_agent_would_not_fast_slice(
    script: Path, base: bytes, tmp_path: Path
) -> None:
    seen = _fuzz(script, base, tmp_path, FAST_ROUNDS)
    assert seen[("marked", "marked")] >= 3 and seen[("unmarked", "unmarked")] >= 3, seen


@pytest.mark.full
def test_the_guard_never_opens_where_the_agent_would_not(script: Path, base: bytes, tmp_path: Path) -> None:
    seen = _fuzz(script, base, tmp_path, ROUNDS)
    # The corpus reaches every outcome, in both programs: it is not just producing unknowns.
    assert seen[("marked", "marked")] >= 50 and seen[("unmarked", "unmarked")] >= 50, seen
    assert seen[("unknown", "unknown")] >= 500 and seen[("unknown", "marked")] >= 20, seen


def test_a_round_reads_the_same_every_time(base: bytes) -> None:
    assert fuzz_case(base, 7) == fuzz_case(base, 7) and fuzz_case(base, 7) != fuzz_case(base, 8)


# --- hand-made damage of every kind issue 13 found ------------------------------------------------------


Step = Callable[[bytearray], object]
BOTH = ("primary", "backup")
LAST = 511  # the base image's last LBA


def mark(*copies: str) -> Step:
    """USR-B marked good in these copies (CRCs recomputed)."""

    def step(data: bytearray) -> None:
        for c in copies:
            slot_bits(data, c, 4, priority=2, tries=0, successful=True)

    return step


def header(copies: tuple[str, ...], **fields: int | bytes) -> Step:
    def step(data: bytearray) -> None:
        for c in copies:
            edit_bytes(data, c, header=fields)

    return step


def entry(copies: tuple[str, ...], number: int, **fields: int | bytes) -> Step:
    def step(data: bytearray) -> None:
        for c in copies:
            edit_bytes(data, c, entries={(number, k): v for k, v in fields.items()})

    return step


def impersonate(number: int) -> Step:
    """Issue 13, 1: partition ``number`` given USR-B's GUID, retyped as /usr and marked, in both copies."""
    return entry(
        BOTH, number, unique=uuid.UUID(USR_B).bytes_le, type=uuid.UUID(USR_TYPE).bytes_le, attributes=1 << 56
    )


def poke(offset: int) -> Step:
    """One byte changed, the CRCs left as they were: a torn write."""
    return lambda d: d.__setitem__(offset, d[offset] ^ 0x55)


def zero(lba: int) -> Step:
    return lambda d: d.__setitem__(slice(lba * SECTOR, (lba + 1) * SECTOR), bytes(SECTOR))


@dataclass(frozen=True)
class Hand:
    steps: tuple[Step, ...]
    booted: int  # the partition number standing for the /usr mount
    form: str  # the command line: {a} is USR-A's PARTUUID, {b} USR-B's
    want: str  # what both programs say (the guard may say unknown where the agent says marked)


B = "mount.usr=PARTUUID={b}"
HAND = {
    "healthy-unmarked": Hand((), 4, B, "unmarked"),
    "healthy-marked": Hand((mark(*BOTH),), 4, B, "marked"),
    "grub-menu-entry": Hand((mark(*BOTH),), 4, "mount.usr=PARTLABEL=USR-B", "marked"),
    "duplicate-guid-on-usr-a": Hand((impersonate(3),), 4, B, "unknown"),
    "duplicate-guid-on-efi": Hand((impersonate(1),), 4, B, "unknown"),
    "duplicate-guid-on-bios-boot": Hand((impersonate(2),), 4, B, "unknown"),
    "efi-impersonator-booted": Hand((impersonate(1),), 1, B, "unknown"),
    "headers-differ": Hand(
        (mark(*BOTH), header(("backup",), disk_guid=uuid.UUID(int=7).bytes_le)), 4, B, "unknown"
    ),
    # An invalid backup: the primary alone answers (sgdisk warns: the guard waits for the agent).
    "backup-range-outside-entries": Hand((mark(*BOTH), header(("backup",), first_usable=40)), 4, B, "marked"),
    "first-after-last": Hand((mark(*BOTH), header(BOTH, first_usable=400, last_usable=300)), 4, B, "unknown"),
    # The primary claims another LBA: the backup answers, at the last LBA pointing at LBA 1.
    "wrong-my-lba": Hand((mark(*BOTH), header(("primary",), my_lba=2)), 4, B, "marked"),
    # The backup is looked for where the primary says; none there, so the primary answers.
    "alternate-elsewhere": Hand((mark(*BOTH), header(("primary",), alternate_lba=300)), 4, B, "marked"),
    "revision-2": Hand((mark(*BOTH), header(BOTH, revision=0x20000)), 4, B, "unknown"),
    "entry-size-odd": Hand((mark(*BOTH), header(BOTH, entry_size=130)), 4, B, "unknown"),
    "one-copy-marked-primary": Hand((mark("primary"),), 4, B, "unknown"),
    "one-copy-marked-backup": Hand((mark("backup"),), 4, B, "unknown"),
    "stale-backup-behind-broken-entries": Hand((mark("backup"), zero(2)), 4, B, "unknown"),
    "twin-labels": Hand((mark(*BOTH), entry(BOTH, 3, name="USR-B".encode("utf-16-le"))), 4, B, "unknown"),
    "retyped": Hand((mark(*BOTH), entry(BOTH, 4, type=bytes(15) + b"\1")), 4, B, "unknown"),
    "other-attribute-bits": Hand((entry(BOTH, 4, attributes=1 << 57 | 1 << 55 | 2 << 48),), 4, B, "unmarked"),
    "cmdline-cr": Hand((mark(*BOTH),), 4, B + " x\rmount.usr=PARTUUID={a}", "unknown"),
    "cmdline-quotes": Hand((mark(*BOTH),), 4, B + ' "mount.usr=PARTUUID={a}"', "unknown"),
    "cmdline-names-the-other-slot": Hand((mark(*BOTH),), 3, B, "unknown"),
    "truncated": Hand((lambda d: d.__delitem__(slice(400 * SECTOR, None)),), 4, B, "unknown"),
    # One check alone stands between a marked copy and "marked": no backup to disagree with.
    "stale-header-crc-no-backup": Hand((mark("primary"), poke(SECTOR + 20), zero(LAST)), 4, B, "unknown"),
    "wrong-my-lba-no-backup": Hand(
        (mark("primary"), header(("primary",), my_lba=2), zero(LAST)), 4, B, "unknown"
    ),
    "stale-array-crc-no-backup": Hand((mark("primary"), poke(2 * SECTOR + 484), zero(LAST)), 4, B, "unknown"),
    "backup-points-elsewhere": Hand(
        (mark("backup"), header(("backup",), alternate_lba=5), zero(1)), 4, B, "unknown"
    ),
    "usable-range-overlaps-array": Hand(
        (mark("primary"), header(("primary",), first_usable=20), zero(LAST)), 4, B, "unknown"
    ),
    "alternate-off-disk-no-backup": Hand(
        (mark("primary"), header(("primary",), alternate_lba=1 << 40), zero(LAST)), 4, B, "unknown"
    ),
    "entry-outside-range-no-backup": Hand(
        (mark("primary"), entry(("primary",), 9, last_lba=600), zero(LAST)), 4, B, "unknown"
    ),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_made_damage(script: Path, base: bytes, tmp_path: Path, name: str) -> None:
    hand = HAND[name]
    data = bytearray(base)
    for step in hand.steps:
        step(data)
    text = (
        "BOOT_IMAGE=/flatcar/vmlinuz-b " + hand.form.format(a=USR_A, b=USR_B) + " rootflags=rw\n"
    ).encode()
    v = judge(Case(name, bytes(data), hand.booted, text), script, tmp_path)
    assert not v.violation, report([v], tmp_path / "failing")
    assert v.agent == hand.want, (v.agent_error, v.said)
    assert v.guard == hand.want or (hand.want == "marked" and v.guard == "unknown"), v.said
    assert v.reader == hand.want, v.said  # the guard's own reader, before sgdisk, says what the agent says


def test_a_4096_byte_sector_disk(script: Path, tmp_path: Path) -> None:
    """A GPT of 4096-byte sectors (written through a 4Kn loop device): the agent reads it; the guard may
    not (sgdisk reads an image file as 512-byte sectors) but must never open where the agent would not."""
    image = tmp_path / "4k.img"
    with image.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    dev = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096", str(image)],
                         capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    try:
        subprocess.run(["sgdisk", "--clear", "-n3:0:+64K", f"-t3:{USR_TYPE}", "-c3:USR-B", f"-u3:{USR_B}",
                        "-A3:set:56", dev], capture_output=True, check=True)  # fmt: skip
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
    v = judge(Case("4k", image.read_bytes(), 3, f"mount.usr=PARTUUID={USR_B}\n".encode()), script, tmp_path)
    assert v.agent == "marked", v.agent_error
    assert not v.violation and v.guard in ("marked", "unknown"), v.said


# --- command lines --------------------------------------------------------------------------------------


def _cmdlines(script: Path, tmp_path: Path, count: int) -> None:
    lines = [c.cmdline for c in load()] + random_cmdlines(SEED, count)
    files = []
    for i, data in enumerate(lines):
        path = tmp_path / f"c{i}"
        path.write_bytes(data)
        files.append(path)
    started = time.monotonic()
    guard = guard_readings(script, files)
    took = time.monotonic() - started
    differ = [
        (i, lines[i], g, agent_readings(lines[i]))
        for i, g in enumerate(guard)
        if g != agent_readings(lines[i])
    ]
    print(f"\n{len(lines)} command lines read by the guard in {took:.1f}s, {len(differ)} read differently")
    assert not differ, "\n".join(
        f"line {i} (seed {SEED}): {d!r}\n  guard {g}\n  agent {a}" for i, d, g, a in differ[:5]
    )


def test_the_guard_reads_command_lines_as_the_agent_does_fast_slice(script: Path, tmp_path: Path) -> None:
    _cmdlines(script, tmp_path, FAST_CMDLINES)


@pytest.mark.full
def test_the_guard_reads_command_lines_as_the_agent_does(script: Path, tmp_path: Path) -> None:
    _cmdlines(script, tmp_path, CMDLINES)


def test_the_replay_is_written_out(tmp_path: Path) -> None:
    """What a failing round leaves behind: its image, its command line and the command that replays it."""
    v = Verdict(Case("fuzz-x", b"disk", 4, b"mount.usr=x\n", ("one",)), "unknown", "marked", "said", "why")
    text = report([v], tmp_path)
    assert (tmp_path / "fuzz-x" / "disk.img").read_bytes() == b"disk" and "replay:" in text
    assert os.fspath(tmp_path / "fuzz-x" / "cmdline") in text
