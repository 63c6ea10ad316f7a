"""The gate's journal: typed round trip, one durable writer, and a reader that any file cannot hurt.

The reader's contract (docs/boot.md "The journal"): whatever sits at ``journal.json`` (binary data, deep
JSON, a huge file, a FIFO, a symbolic link, a directory, wrong types, an unknown key), reading it
returns a journal or raises :class:`~piccolod.journal.JournalError` with one line that names the file,
within a bounded time and memory; it never blocks and never follows a link. A seeded mutation loop
holds that over thousands of inputs; the cases from the issue are regression tests, also through the
``piccolod status`` and ``piccolod gate --dry-run`` commands.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from piccolod import journal
from piccolod.baseline import Baseline, BaselineCheck, Classified, FailureClass
from piccolod.journal import BootGate, GateVerdict, Journal, JournalError, RollbackTally, Store
from piccolod.policy import FailureCondition
from piccolod.record import ComponentVerdict, RollbackRecord
from tests.agent_helpers import FREE_SPACE_FLOOR, free_port
from tests.fixtures.gptdisk import USR_B, cmdline_for, usr_device

NAME = journal.JOURNAL_NAME


def record(**over: object) -> RollbackRecord:
    base = RollbackRecord(
        boot_id="boot-1",
        slot="USR-B",
        partuuid=USR_B,
        disk="/dev/vda",
        os_version="4081.2.0",
        condition="critical_component_failure",
        reason="required components failing: tpm",
        started_at=1795790000.25,
        failed_at=1795790005.5,
        deadline_seconds=5.0,
        attempts=3,
        reboot_requested=True,
        components=(ComponentVerdict("tpm", False, True, "no answer within 1s", 1.25),),
    )
    return replace(base, **over)  # type: ignore[arg-type]


def gate(**over: object) -> BootGate:
    base = BootGate(
        boot_id="boot-1",
        slot="USR-B",
        partuuid=USR_B,
        slot_state="unmarked",
        started_at=1795790000.25,
        started_monotonic=12.5,
        deadline_monotonic=132.5,
        verdict=GateVerdict.FAILED,
        condition=FailureCondition.CRITICAL_COMPONENT_FAILURE,
        reason="required components failing: tpm",
        attempts=3,
        finished_at=1795790005.5,
        reboot_planned=True,
        reboot_requested=True,
    )
    return replace(base, **over)  # type: ignore[arg-type]


FULL = Journal(
    boot=replace(gate(), failures=(Classified("tpm", FailureClass.REGRESSION, "passed in the baseline"),)),
    rollback=record(),
    previous_rollback=record(boot_id="boot-0"),
    rollbacks=RollbackTally(count=3, last_at=1795780000.5, last_boot_id="boot-0"),
    baseline=Baseline(
        "3815.2.5",
        1795770000.25,
        "boot-0",
        "USR-A",
        "need_reboot",
        "3975.2.0",
        (BaselineCheck("tpm", "passed", "TPM 2.0"), BaselineCheck("storage", "failed", "full")),
    ),
)


def test_round_trip_is_atomic_sorted_and_typed(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    assert store.put(FULL)
    assert journal.read(tmp_path / "state") == FULL
    text = (tmp_path / "state" / NAME).read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert [p.name for p in (tmp_path / "state").iterdir()] == [NAME]  # no temporary file left


def test_the_restart_questions(tmp_path: Path) -> None:
    j = replace(FULL, boot=gate())
    assert j.gate_of("boot-1") == gate() and j.gate_of("boot-1", USR_B) == gate()
    assert j.gate_of("boot-2") is None  # another boot: no gate of this boot began
    assert j.gate_of("boot-1", "another-slot") is None
    begun = gate(verdict=None, finished_at=None, reboot_requested=False)
    assert not begun.finished and gate().finished and gate().reboot_requested
    assert gate().deadline_monotonic == 132.5


def test_the_gate_deadline_on_the_wall_clock() -> None:
    assert gate().deadline_at == 1795790000.25 + 120


def test_a_rollback_is_counted_once_and_what_was_read_is_clamped(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    tally = store.count_rollback(record(boot_id="boot-1", failed_at=1700000000.0))
    assert (tally.count, tally.last_at, tally.last_boot_id) == (1, 1700000000.0, "boot-1")
    assert store.count_rollback(record(boot_id="boot-1")) is tally  # the same record: not again
    assert journal.read(tmp_path / "state").rollbacks == tally  # on disk, for the next boots
    assert store.count_rollback(record(boot_id="boot-3", failed_at=1700000600.0)).count == 2
    # A hostile or damaged journal: a negative or enormous count, a time far in the future.
    now = time.time()
    assert RollbackTally(count=-7).counted(record(boot_id="x"), now).count == 1
    assert RollbackTally(count=10**30).counted(record(boot_id="x"), now).count == journal.MAX_COUNT
    assert RollbackTally().counted(record(boot_id="x", failed_at=1e18), now).last_at == now
    assert RollbackTally().counted(record(boot_id="x", failed_at=-5.0), now).last_at == 0.0


def test_a_failed_write_keeps_the_new_journal_in_memory(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    store = Store(tmp_path / "a-file")  # the state "directory" is a file: every write fails
    assert not store.put(FULL)
    assert store.journal == FULL  # this process still knows the verdict and the reboot


def test_an_older_agents_rollback_record_is_read_once(tmp_path: Path) -> None:
    (tmp_path / journal.LEGACY_RECORD_NAME).write_text(json.dumps(record().to_json()))
    assert journal.read(tmp_path) == Journal(rollback=record())
    Store(tmp_path).put(Journal())  # once there is a journal, the old file is not read again
    assert journal.read(tmp_path) == Journal()
    (tmp_path / NAME).unlink()
    (tmp_path / journal.LEGACY_RECORD_NAME).write_bytes(b"\xff\xfe not a record")
    assert journal.read(tmp_path) == Journal()  # an unusable old file is logged and ignored


# --- regression cases: one line naming the file -------------------------------------------------------


def one_line(error: JournalError, path: Path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    return text


def test_keys_a_newer_agent_wrote_are_read_past(tmp_path: Path) -> None:
    """Forward compatibility: the agent of the other slot may be newer; what this one does not know it
    leaves alone, while a wrong type is still refused."""
    path = tmp_path / NAME
    path.write_bytes(
        b'{"format": 1, "surprise": true, "rollbacks": {"count": 2, "new": [1]},'
        b' "baseline": {"version": "1.2.3", "taken_at": 5, "boot_id": "b", "slot": "USR-A",'
        b' "trigger": "need_reboot", "later": {},'
        b' "checks": [{"component": "tpm", "state": "passed", "x": 1}]}}'
    )
    got = journal.read(tmp_path)
    assert got.rollbacks.count == 2
    assert got.baseline is not None
    assert got.baseline.state_of("tpm") == "passed"
    path.write_bytes(b'{"format": 1, "surprise": true, "rollbacks": {"count": "2"}}')
    with pytest.raises(JournalError, match=r"rollbacks\.count: expected an integer"):
        journal.read(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x80\x81binary\xff", "not UTF-8 (byte 0)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 8 deep"),
        (b'{"boot": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}}}', "nested more than 8 deep"),
        (b"{half", "not JSON"),
        (b"[1, 2]", "not a journal (not a JSON object)"),
        (b'{"format": 1e999}', "number out of range"),
        (b'{"format": NaN}', "NaN is not a number"),
        (b'{"format": ' + b"9" * 5000 + b"}", "not JSON"),
        (b'{"format": 2}', "format 2, this agent reads format 1"),
        (b'{"boot": {"boot_id": 1}}', "boot.boot_id: expected a string"),
        (b'{"rollback": {"attempts": "3"}}', "rollback"),
        (b'{"boot": null, "rollback": {"components": "tpm"}}', "rollback"),
    ],
)
def test_an_unusable_journal_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / NAME
    path.write_bytes(content)
    with pytest.raises(JournalError) as info:
        journal.read(tmp_path)
    assert message in one_line(info.value, path)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / NAME)
    t0 = time.monotonic()
    with pytest.raises(JournalError) as info:
        journal.read(tmp_path)
    assert time.monotonic() - t0 < 1.0
    assert "is a FIFO, not a regular file" in one_line(info.value, tmp_path / NAME)


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    Store(tmp_path / "other").put(FULL)
    target.write_bytes((tmp_path / "other" / NAME).read_bytes())
    (tmp_path / NAME).symlink_to(target)
    with pytest.raises(JournalError) as info:
        journal.read(tmp_path)
    assert "is a symbolic link: not followed" in one_line(info.value, tmp_path / NAME)


@pytest.mark.parametrize("kind", ["directory", "device", "too large"])
def test_other_files_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / NAME
    if kind == "directory":
        path.mkdir()
        want = "is a directory"
    elif kind == "device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a character device like /dev/null
        want = "is a character device"
    else:
        with path.open("wb") as f:
            f.truncate(journal.MAX_BYTES + 1)
        want = "more than the"
    with pytest.raises(JournalError) as info:
        journal.read(tmp_path)
    assert want in one_line(info.value, path)


def test_the_store_goes_on_without_an_unusable_journal_and_replaces_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(tmp_path / NAME)
    store = Store.load(tmp_path)
    assert store.journal == Journal() and store.error and "FIFO" in store.error
    assert any("FIFO" in r.getMessage() for r in caplog.records)
    assert store.put(FULL)  # the writer replaces the FIFO by a file
    assert journal.read(tmp_path) == FULL


# --- the seeded mutation loop ---------------------------------------------------------------------------

SEED = 20261130
ROUNDS = 4000


def _mutations(rng: random.Random, good: bytes) -> bytes:
    data = bytearray(good)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(9)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 2 and data:  # delete a slice
            del data[at : at + rng.randint(1, 32)]
        elif op == 3:  # nest deeper
            n = rng.choice((2, 9, 50, 5000))
            data[at:at] = b"[" * n + b"]" * n
        elif op == 4:  # a huge number
            data[at:at] = rng.choice((b"1e999", b"-1e999", b"9" * 5000, b"NaN", b"Infinity", b"1" * 20))
        elif op == 5:  # swap a value for another JSON type
            data[at:at] = rng.choice((b"null", b"true", b'"x"', b"{}", b"[]", b"0", b"-1.5"))
        elif op == 6:  # invalid UTF-8 or escapes
            data[at:at] = rng.choice((b"\xc3", b"\xed\xa0\x80", b'"\\ud800"', b"\x00", b'"\\u0000"'))
        elif op == 7:  # duplicate a slice
            data[at:at] = data[at : at + rng.randint(1, 64)]
        else:  # truncate
            del data[at:]
    return bytes(data)


def test_seeded_mutations_hold_the_reader_contract(tmp_path: Path) -> None:
    """4,000 mutated journals: each read returns a typed journal or one line naming the file, fast."""
    rng = random.Random(SEED)
    good = journal.encode(FULL).encode()
    path = tmp_path / NAME
    outcomes = {"journal": 0, "error": 0}
    slowest = 0.0
    for _ in range(ROUNDS):
        data = _mutations(rng, good)
        path.write_bytes(data)
        t0 = time.monotonic()
        try:
            got = journal.read(tmp_path)
        except JournalError as e:
            one_line(e, path)
            outcomes["error"] += 1
        else:
            assert isinstance(got, Journal)
            assert got.boot is None or isinstance(got.boot.started_monotonic, float)
            outcomes["journal"] += 1
        slowest = max(slowest, time.monotonic() - t0)
    assert slowest < 2.0, slowest
    assert outcomes["error"] > ROUNDS / 2 and outcomes["journal"] > 0, outcomes  # the loop reaches both


# --- the commands -----------------------------------------------------------------------------------


def _config(tmp_path: Path, disk: Path) -> Path:
    (tmp_path / "cmdline").write_text(cmdline_for(USR_B))
    config = tmp_path / "policy.yaml"
    config.write_text(
        "health_policy:\n"
        "  startup: {timeout_seconds: 1, required_components: [storage], optional_components: []}\n"
        f"  thresholds: {{min_disk_space_percent: {FREE_SPACE_FLOOR}}}\n"
        f"  checks: {{storage: {{mounts: ['{tmp_path}']}}}}\n"
        "agent:\n"
        f"  listen: '127.0.0.1:{free_port()}'\n  state_dir: '{tmp_path / 'state'}'\n"
        f"  boot: {{cmdline: '{tmp_path / 'cmdline'}', usr_device: '{usr_device(disk, partuuid=USR_B)}'}}\n"
    )
    (tmp_path / "state").mkdir()
    return config


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    return subprocess.run(
        [sys.executable, "-m", "piccolod", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("bad", ["binary", "nested", "fifo"])
def test_status_and_dry_run_survive_a_hostile_journal(tmp_path: Path, flatcar_disk: Path, bad: str) -> None:
    config = _config(tmp_path, flatcar_disk)
    path = tmp_path / "state" / NAME
    if bad == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    elif bad == "nested":
        path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    else:
        os.mkfifo(path)
    t0 = time.monotonic()
    status = _run("status", "--config", str(config))
    assert time.monotonic() - t0 < 10  # an interpreter start, no hang
    assert status.returncode == 3, status.stdout + status.stderr
    assert "Traceback" not in status.stderr
    assert status.stderr.splitlines() == [status.stderr.strip()] and str(path) in status.stderr
    assert "* USR-A" in status.stdout or "USR-B" in status.stdout  # the slot table is still there
    dry = _run("gate", "--dry-run", "--config", str(config))
    assert "Traceback" not in dry.stderr, dry.stderr
    assert dry.returncode in (0, 3), dry.stdout + dry.stderr
    errors = [ln for ln in dry.stderr.splitlines() if str(path) in ln]
    assert len(errors) == 1, dry.stderr
    assert "decision:" in dry.stdout


# --- status never crashes on a stored value ---------------------------------------------------------

EXTREMES = (0, -1, 1, 1e308, -1e308, 1e-308, 2**63, -(2**63), 10**18, 253402300800.0, 1.5, 1e300)
TEXTS = ("", "x", "\x1b[2J\n", "\u2028", "\ud7ff" * 3, "a" * 5000)


def _wild(rng: random.Random, value: object) -> object:
    """A stored value the model still accepts (its type), with an extreme number or a hostile text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(rng.choice([e for e in EXTREMES if isinstance(e, int)]))
    if isinstance(value, float):
        return float(rng.choice(EXTREMES))
    if isinstance(value, str):
        return rng.choice(TEXTS) if rng.random() < 0.5 else value
    if isinstance(value, list):
        return [_wild(rng, v) for v in value]
    if isinstance(value, dict):
        return {
            k: _wild(rng, v) if k not in ("format", "verdict", "condition", "failure_class") else v
            for k, v in value.items()
        }
    return value


def test_status_never_crashes_on_a_stored_value(
    tmp_path: Path, flatcar_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: ``status`` crashed on ``started_at: 1e308``. Seeded journals whose every number and text
    is extreme (but of the right type, so the journal is read and shown): exit 0, never a traceback."""
    from piccolod.cli import main

    config = _config(tmp_path, flatcar_disk)
    path = tmp_path / "state" / NAME
    plain = json.loads(journal.encode(FULL))
    rng = random.Random(20_261_215)
    for _round in range(150):
        path.write_text(json.dumps(_wild(rng, plain)))
        assert journal.read(tmp_path / "state") is not None  # the model takes it: status must show it
        for extra in ([], ["--json"]):
            code = main(["status", "--config", str(config), *extra])
            out, err = capsys.readouterr()
            assert code == 0, err
            assert "Traceback" not in err and ("last gate:" in out or extra)
            assert extra or not any(c in out for c in "\x1b\u2028"), out[-300:]  # escaped, on a terminal too
