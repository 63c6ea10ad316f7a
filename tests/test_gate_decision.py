"""The gate's rule (property tests over slot state x results x deadline) and its driver loop."""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piccolod import gate, journal, manager
from piccolod.assess import Assessment, verdict
from piccolod.gate import Decision, decide, run_gate
from piccolod.journal import GateVerdict, Store
from piccolod.model import Source, build
from piccolod.notify import notify
from piccolod.policy import Component, FailureCondition, PolicyFile
from piccolod.result import CheckResult
from piccolod.slot import BootSlot, SlotState

REQUIRED = (Component.TPM, Component.STORAGE, Component.API)

failing_st = st.one_of(st.none(), st.lists(st.sampled_from(REQUIRED), unique=True).map(tuple))
conditions_st = st.sets(st.sampled_from(list(FailureCondition)))
times_st = st.floats(min_value=0, max_value=1000, allow_nan=False)


@given(
    slot=st.sampled_from(list(SlotState)),
    failing=failing_st,
    elapsed=times_st,
    deadline=st.floats(min_value=0.01, max_value=500),
    conditions=conditions_st,
    automatic=st.booleans(),
    dry_run=st.booleans(),
    api_for=times_st,
)
def test_decision_properties(
    slot: SlotState,
    failing: tuple[Component, ...] | None,
    elapsed: float,
    deadline: float,
    conditions: set[FailureCondition],
    automatic: bool,
    dry_run: bool,
    api_for: float,
) -> None:
    v = decide(
        slot,
        failing,
        elapsed=elapsed,
        deadline=deadline,
        conditions=conditions,
        automatic=automatic,
        dry_run=dry_run,
        api_failing_for=api_for,
    )
    # A marked slot is never blocked and never rebooted.
    if slot is SlotState.MARKED:
        assert v.decision is Decision.READY and not v.reboot
    # Passing required components always open the gate.
    if failing == ():
        assert v.decision is Decision.READY
    # A reboot only on a failed, unmarked (known) slot, when enabled, and never in dry-run (the driver
    # keeps it to one per boot).
    if v.reboot:
        assert v.decision is Decision.FAIL
        assert slot is SlotState.UNMARKED and automatic and not dry_run
    # A failure always names its condition; it reboots an unmarked slot when that condition is enabled and
    # rollback is allowed, and otherwise leaves the slot unmarked (update-engine held) without a reboot.
    if v.decision is Decision.FAIL:
        assert v.condition is not None
        enabled = v.condition in conditions
        assert v.reboot == (enabled and slot is SlotState.UNMARKED and automatic and not dry_run)
        assert enabled or "no reboot" in v.reason
    # Before the deadline a failing slot waits (unless the API has been down for 300 s).
    api_down = api_for >= 300 and failing is not None and Component.API in failing
    if slot is not SlotState.MARKED and failing != () and elapsed < deadline and not api_down:
        assert v.decision is Decision.WAIT
    # After the deadline nothing waits any more.
    if elapsed >= deadline:
        assert v.decision is not Decision.WAIT
    # A gate that is not marked opens only on a pass: whatever the policy's conditions (issue 13: with
    # failure_conditions [] every failing gate used to open at its deadline).
    if slot is not SlotState.MARKED and v.decision is Decision.READY:
        assert failing == ()


def test_a_failure_whose_condition_is_off_fails_without_a_reboot() -> None:
    kw: dict[str, Any] = {"deadline": 10.0, "automatic": True}
    u = SlotState.UNMARKED
    v = decide(u, (Component.TPM,), elapsed=10, conditions={FailureCondition.API_UNRESPONSIVE_300S}, **kw)
    assert (v.decision, v.condition, v.reboot) == (
        Decision.FAIL,
        FailureCondition.CRITICAL_COMPONENT_FAILURE,
        False,
    )
    assert "critical_component_failure is not one of the policy's failure_conditions: no reboot" in v.reason
    v = decide(u, None, elapsed=10, conditions={FailureCondition.CRITICAL_COMPONENT_FAILURE}, **kw)
    assert (v.decision, v.condition, v.reboot) == (Decision.FAIL, FailureCondition.STARTUP_TIMEOUT, False)
    v = decide(u, (Component.TPM,), elapsed=10, conditions={FailureCondition.STARTUP_TIMEOUT}, **kw)
    assert (v.decision, v.condition, v.reboot) == (Decision.FAIL, FailureCondition.STARTUP_TIMEOUT, True)


def test_conditions_that_fire() -> None:
    kw: dict[str, Any] = {"deadline": 10.0, "conditions": set(FailureCondition), "automatic": True}
    u = SlotState.UNMARKED
    assert (
        decide(u, (Component.TPM,), elapsed=10, **kw).condition is FailureCondition.CRITICAL_COMPONENT_FAILURE
    )
    assert decide(u, None, elapsed=10, **kw).condition is FailureCondition.STARTUP_TIMEOUT
    v = decide(u, (Component.API,), elapsed=5, api_failing_for=300, **kw)
    assert v.condition is FailureCondition.API_UNRESPONSIVE_300S and v.reboot
    kw["conditions"] = {FailureCondition.STARTUP_TIMEOUT}
    assert decide(u, (Component.TPM,), elapsed=10, **kw).condition is FailureCondition.STARTUP_TIMEOUT
    unknown = decide(SlotState.UNKNOWN, (Component.TPM,), elapsed=10, **kw)
    assert unknown.decision is Decision.FAIL and not unknown.reboot  # fail closed, but no reboot


# --- the driver, with a fake clock and plain assessment functions -----------------------------------


def policy(state_dir: Path, **startup: Any) -> PolicyFile:
    data = {
        "health_policy": {
            "startup": {"timeout_seconds": 5, "required_components": ["tpm", "storage"], **startup},
            "rollback": {"reboot_grace_seconds": 2, "reboot_command": ["reboot-stand-in"]},
        },
        "agent": {"state_dir": str(state_dir)},
    }
    return build(PolicyFile, data, Source("test-policy.yaml"))


def assessment(**healthy: bool) -> Assessment:
    results = tuple(
        CheckResult(Component(c), ok, "fine" if ok else f"{c} is down", {}, 0.01, time.time(), True)
        for c, ok in healthy.items()
    )
    return Assessment(verdict(results), results, time.time(), 0.02)


def slot_in(state: SlotState) -> BootSlot:
    return BootSlot("e03dd35c-7c2d-4a47-b3fe-27f15780a57c", "/disk.img", "USR-B", state)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.reboots: list[Sequence[str]] = []

    def notify(self, *lines: str) -> bool:
        self.sent.extend(lines)
        return True

    def reboot(self, argv: Sequence[str]) -> str | None:
        self.reboots.append(argv)
        return None


def drive(
    p: PolicyFile,
    state: SlotState,
    results: Iterator[Assessment],
    *,
    dry_run: bool = False,
    clock: Clock | None = None,
) -> tuple[gate.GateResult, Recorder, Clock]:
    clock, r = clock or Clock(), Recorder()
    out = run_gate(
        p,
        slot_in(state),
        lambda: next(results),
        notify=r.notify,
        boot_id="boot-1",
        store=Store.load(Path(p.agent.state_dir)),
        dry_run=dry_run,
        clock=clock,
        sleep=clock.sleep,
        reboot=r.reboot,
    )
    return out, r, clock


def read(state_dir: Path) -> journal.Journal:
    return journal.read(state_dir)


def test_marked_slot_is_ready_at_once_without_assessing(tmp_path: Path) -> None:
    out, r, clock = drive(policy(tmp_path), SlotState.MARKED, iter(()))
    assert out.ready and out.startup_health_check == "skipped" and out.attempts == 0
    assert not r.reboots and clock.slept == [] and not any("EXTEND" in s for s in r.sent)
    gate_ = read(tmp_path).boot
    assert gate_ is not None and gate_.verdict is GateVerdict.SKIPPED


def test_unmarked_slot_retries_until_pass(tmp_path: Path) -> None:
    seq = iter([assessment(tpm=False, storage=True)] * 3 + [assessment(tpm=True, storage=True)])
    out, r, _ = drive(policy(tmp_path), SlotState.UNMARKED, seq)
    assert out.ready and out.attempts == 4 and out.startup_health_check == "passed"
    assert sum(s.startswith("EXTEND_TIMEOUT_USEC=") for s in r.sent) == 4
    assert sum(s.startswith("STATUS=gate: checking USR-B") for s in r.sent) == 4
    assert not r.reboots  # READY=1 and the token are the hook's (tests/test_gatehook.py)
    j = read(tmp_path)
    assert j.rollback is None and j.boot is not None and j.boot.verdict is GateVerdict.PASSED
    assert j.boot.attempts == 4


def test_failure_writes_record_and_reboots_once(tmp_path: Path) -> None:
    p = policy(tmp_path)
    out, r, clock = drive(p, SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)] * 100))
    assert not out.ready and out.startup_health_check == "failed"
    assert out.verdict.condition is FailureCondition.CRITICAL_COMPONENT_FAILURE
    assert r.reboots == [("reboot-stand-in",)] and clock.slept[-1] == 2  # the grace
    j = read(tmp_path)
    record = j.rollback
    assert record is not None and record.slot == "USR-B" and record.boot_id == "boot-1"
    assert record.condition == "critical_component_failure" and record.reboot_requested
    assert [(c.component, c.healthy) for c in record.components] == [("tpm", False), ("storage", True)]
    assert j.boot is not None and j.boot.verdict is GateVerdict.FAILED and j.boot.reboot_requested
    # A restarted agent in the same boot repeats the verdict without assessing, and never reboots again.
    out2, r2, _ = drive(p, SlotState.UNMARKED, iter(()))
    assert not out2.ready and out2.earlier and out2.attempts == j.boot.attempts and r2.reboots == []
    assert "STATUS=gate failed (critical_component_failure): reboot already requested in this boot" in r2.sent


def test_a_crash_before_the_reboot_still_reboots_once_on_restart(tmp_path: Path) -> None:
    """The verdict says reboot, the agent died in the grace: the restarted agent reboots, once."""
    p = policy(tmp_path)

    class Crash(Exception):
        pass

    clock = Clock()

    def crash_in_the_grace(s: float) -> None:
        if s == 2:  # the policy's reboot_grace_seconds
            raise Crash
        clock.sleep(s)

    with pytest.raises(Crash):
        run_gate(
            p,
            slot_in(SlotState.UNMARKED),
            lambda: assessment(tpm=False, storage=True),
            notify=lambda *a: True,
            boot_id="boot-1",
            store=Store.load(tmp_path),
            clock=clock,
            sleep=crash_in_the_grace,
            reboot=lambda argv: None,
        )
    b = read(tmp_path).boot
    assert b is not None and b.verdict is GateVerdict.FAILED and b.reboot_planned and not b.reboot_requested
    out, r, _ = drive(p, SlotState.UNMARKED, iter(()))
    assert out.earlier and r.reboots == [("reboot-stand-in",)]
    out, r, _ = drive(p, SlotState.UNMARKED, iter(()))
    assert r.reboots == []


def test_a_resumed_gate_keeps_its_first_deadline(tmp_path: Path) -> None:
    """A gate that began and has no verdict resumes with the deadline it began with: past it, the
    verdict is startup_timeout at once, without another assessment (a crash loop cannot extend it)."""
    p = policy(tmp_path)
    clock = Clock()
    calls: list[int] = []

    def stop_midway(s: float) -> bool:
        clock.now += s
        return clock.now > 102  # the agent is stopped 2 s into the gate

    def failing() -> Assessment:
        calls.append(1)
        return assessment(tpm=False, storage=True)

    with pytest.raises(gate.Interrupted):
        run_gate(
            p,
            slot_in(SlotState.UNMARKED),
            failing,
            notify=lambda *a: True,
            boot_id="boot-1",
            store=Store.load(tmp_path),
            clock=clock,
            sleep=stop_midway,
        )
    b = read(tmp_path).boot
    assert b is not None and not b.finished and b.deadline_monotonic == 105.0
    clock.now = 104.0  # restarted 1 s before the first deadline: resumes, and fails at 105
    seen = len(calls)
    out, r, _ = drive(p, SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)] * 10), clock=clock)
    assert out.resumed and not out.ready and clock.now <= 105.0 + 2 + 1e-9  # deadline + grace
    assert seen >= 2 and out.attempts >= 1  # it assessed again before its first deadline
    # a fresh boot id would start over; the same boot past the deadline assesses nothing
    (tmp_path / journal.JOURNAL_NAME).write_text(journal.encode(journal.Journal(boot=replace(b, reason=""))))
    clock.now = 200.0
    out, r, _ = drive(p, SlotState.UNMARKED, iter(()), clock=clock)
    assert out.attempts == 0 and out.verdict.condition is FailureCondition.STARTUP_TIMEOUT
    assert r.reboots == [("reboot-stand-in",)]


@pytest.mark.parametrize(
    ("started", "deadline", "attempts"),
    [
        (99.0, 1e300, 1),  # issue 13: OverflowError in the thread join, a crash loop with no verdict
        (99.0, 99.0 + 1e9, 1),  # issue 13: a gate that never ends, the start timeout extended by 31 years
        (1e9, 1e9 + 5, 1),  # began in the future
        (-1e300, -1e300 + 5, 1),  # began before the boot
        (99.0, 1.0, 10**18),  # a deadline before the start, a count no gate reaches
    ],
)
def test_a_journal_beyond_the_policy_can_neither_stall_nor_crash_the_gate(
    tmp_path: Path, started: float, deadline: float, attempts: int
) -> None:
    """Every number the journal holds is held to the policy: the resumed gate ends no later than
    timeout_seconds after it began (and never after now + timeout), and EXTEND_TIMEOUT_USEC stays bounded."""
    p = policy(tmp_path)  # timeout 5 s, grace 2 s
    stored = journal.BootGate(boot_id="boot-1", slot="USR-B", partuuid="e03dd35c-7c2d-4a47-b3fe-27f15780a57c",
                              slot_state="unmarked", started_at=1e308, started_monotonic=started,
                              deadline_monotonic=deadline, attempts=attempts)  # fmt: skip
    (tmp_path / journal.JOURNAL_NAME).write_text(journal.encode(journal.Journal(boot=stored)))
    clock = Clock()
    out, r, _ = drive(p, SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)] * 100), clock=clock)
    assert out.resumed and not out.ready
    assert clock.now <= 100.0 + 5 + 2 + 1 + 1e-9  # deadline + grace + one retry at most
    extends = [int(x.split("=", 1)[1]) for x in r.sent if x.startswith("EXTEND_TIMEOUT_USEC=")]
    assert all(0 <= e <= (5 + 2 + gate.EXTEND_MARGIN_SECONDS) * 1e6 for e in extends), extends
    assert r.reboots == [("reboot-stand-in",)]
    b = read(tmp_path).boot
    assert b is not None and b.finished and b.deadline_monotonic <= 100.0 + 5


@pytest.mark.parametrize("where", ["under /dev/null", "full tmpfs"])
def test_an_unwritable_state_dir_still_reboots_once(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """/var full or gone (exactly when storage fails): no journal, but the reboot happens, once: the
    store keeps the journal in memory for this process."""
    import subprocess

    if where == "full tmpfs":
        state = tmp_path / "full"
        state.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state)], check=True)
    else:
        state = Path("/dev/null") / f"piccolod-{tmp_path.name}"
    try:
        if where == "full tmpfs":
            with (state / "filler").open("wb") as f, pytest.raises(OSError, match="No space left"):
                f.write(b"x" * 1024 * 1024)
                f.flush()
        p = policy(state)
        caplog.set_level("CRITICAL", logger="piccolod.journal")
        store = Store.load(state)
        r = Recorder()
        clock = Clock()
        args: dict[str, Any] = {"notify": r.notify, "boot_id": "boot-1", "store": store, "clock": clock,
                                "sleep": clock.sleep, "reboot": r.reboot}  # fmt: skip
        out = run_gate(p, slot_in(SlotState.UNMARKED), lambda: assessment(tpm=False, storage=False), **args)
        assert not out.ready and out.verdict.reboot and out.reboot_requested
        assert r.reboots == [("reboot-stand-in",)]
        assert "STATUS=gate failed (critical_component_failure): rebooting in 2s" in r.sent
        critical = [m.getMessage() for m in caplog.records if m.levelname == "CRITICAL"]
        assert any("cannot write" in m for m in critical), critical
        assert not (state / journal.JOURNAL_NAME).exists()
        out2 = run_gate(p, slot_in(SlotState.UNMARKED), lambda: assessment(tpm=False, storage=False), **args)
        assert out2.earlier and r.reboots == [("reboot-stand-in",)]  # this process remembers
    finally:
        if where == "full tmpfs":
            subprocess.run(["umount", str(state)], check=True)


def test_no_reboot_when_automatic_rollback_is_off(tmp_path: Path) -> None:
    p = build(
        PolicyFile,
        {
            "health_policy": {
                "startup": {"timeout_seconds": 2, "required_components": ["tpm"]},
                "rollback": {"enable_automatic": False},
            },
            "agent": {"state_dir": str(tmp_path)},
        },
        Source("t.yaml"),
    )
    out, r, _ = drive(p, SlotState.UNMARKED, iter([assessment(tpm=False)] * 100))
    assert not out.ready and r.reboots == [] and read(tmp_path).rollback is not None
    assert f"STATUS=gate failed (critical_component_failure): {gate.ROLLBACK_DISABLED}" in r.sent


def test_hung_assessment_is_a_startup_timeout(tmp_path: Path) -> None:
    p = policy(tmp_path, timeout_seconds=0.3)
    t0 = time.monotonic()

    def hang() -> Assessment:
        time.sleep(5)
        raise AssertionError("unreachable")

    r = Recorder()
    out = run_gate(
        p,
        slot_in(SlotState.UNMARKED),
        hang,
        notify=r.notify,
        boot_id="b",
        store=Store.load(tmp_path),
        reboot=r.reboot,
        sleep=lambda s: None,
    )
    assert time.monotonic() - t0 < 1.0
    assert out.verdict.condition is FailureCondition.STARTUP_TIMEOUT and r.reboots


def test_dry_run_acts_on_nothing(tmp_path: Path) -> None:
    out, r, clock = drive(
        policy(tmp_path), SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)]), dry_run=True
    )
    assert out.attempts == 1 and out.verdict.decision is Decision.FAIL and out.verdict.reboot  # would
    assert r.sent == [] and r.reboots == [] and clock.slept == []
    assert not (tmp_path / journal.JOURNAL_NAME).exists()


def test_pass_supersedes_an_old_record(tmp_path: Path) -> None:
    drive(policy(tmp_path), SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)] * 100))
    old = read(tmp_path).rollback
    assert old is not None
    other = Clock()
    out = run_gate(
        policy(tmp_path), slot_in(SlotState.UNMARKED), lambda: assessment(tpm=True, storage=True),
        notify=lambda *a: True, boot_id="boot-2", store=Store.load(tmp_path), clock=other, sleep=other.sleep,
    )  # fmt: skip
    j = read(tmp_path)
    assert out.ready and j.rollback is None and j.previous_rollback == old


def test_real_reboot_command_and_real_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "reboot"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/reboots\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    p = build(
        PolicyFile,
        {
            "health_policy": {
                "startup": {"timeout_seconds": 0.2, "required_components": ["tpm"]},
                "rollback": {"reboot_grace_seconds": 0, "reboot_command": [str(script), "--now"]},
            },
            "agent": {"state_dir": str(tmp_path / "state")},
        },
        Source("t.yaml"),
    )
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(0.5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
        out = run_gate(
            p,
            slot_in(SlotState.UNMARKED),
            lambda: assessment(tpm=False),
            notify=notify,
            boot_id="b",
            store=Store.load(tmp_path / "state"),
        )
        got = []
        try:
            while True:
                got.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    assert out.reboot_requested and out.reboot_error is None
    assert (tmp_path / "reboots").read_text() == "--now\n"
    joined = "\n".join(got)
    assert "EXTEND_TIMEOUT_USEC=" in joined and "READY=1" not in joined
    assert "STATUS=gate failed (critical_component_failure): reboot requested" in joined
    b = read(tmp_path / "state").boot
    assert b is not None and b.boot_id == "b" and b.reboot_requested
    assert manager.run_reboot(["/nonexistent/reboot"]) is not None
    assert "exited 1" in (manager.run_reboot(["sh", "-c", "exit 1"]) or "")
    # systemd stops this unit (and the command with it) once the shutdown begins: that is success.
    assert manager.run_reboot(["sh", "-c", "kill -TERM $$"]) is None
    assert manager.run_reboot(["sh", "-c", "kill -KILL $$"]) is None
