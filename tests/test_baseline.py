"""The regression-aware gate: each failing required check against the old slot's baseline, and what
``rollback.on_pre_existing`` makes of it (the rule, the driver, the record, the journal)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from piccolod import baseline as bl
from piccolod import journal
from piccolod import record as rec
from piccolod.baseline import Baseline, BaselineCheck, FailureClass
from piccolod.gate import Decision
from piccolod.journal import GateVerdict, Store
from piccolod.model import Source, build
from piccolod.policy import Component, PolicyFile
from piccolod.result import CheckResult, CheckState
from piccolod.slot import SlotState
from tests.test_gate_decision import assessment, drive, policy

TPM, STORAGE = Component.TPM, Component.STORAGE


def result(name: str, state: CheckState) -> CheckResult:
    healthy = state is CheckState.PASSED
    run_state = None if state in (CheckState.PASSED, CheckState.FAILED) else state
    return CheckResult(name, healthy, f"{name} {state}", {}, 0.01, time.time(), True, run_state)


def taken(slot: str | None = "USR-A", target: str = "", **states: str) -> Baseline:
    checks = tuple(BaselineCheck(n, s) for n, s in states.items())
    return Baseline("3815.2.5", 1_796_000_000.0, "boot-0", slot, "need_reboot", target, checks)


def classes(got: tuple[bl.Classified, ...]) -> dict[str, FailureClass]:
    return {c.component: c.failure_class for c in got}


def test_each_class_and_why() -> None:
    base = taken(tpm="passed", storage="failed", web="refused", sock="unknown")
    failing = [
        result("tpm", CheckState.FAILED),
        result("storage", CheckState.FAILED),
        result("web", CheckState.FAILED),
        result("sock", CheckState.FAILED),
        result("ingest", CheckState.FAILED),
        result("app", CheckState.UNKNOWN),
        result("dns", CheckState.CANCELLED),
    ]
    got = bl.classify(failing, base, slot="USR-B", version="3975.2.0")
    assert classes(got) == {
        "tpm": FailureClass.REGRESSION,
        "storage": FailureClass.PRE_EXISTING,
        "web": FailureClass.PRE_EXISTING,
        "sock": FailureClass.INCONCLUSIVE,  # the baseline could not tell
        "ingest": FailureClass.INCONCLUSIVE,  # the baseline did not run it
        "app": FailureClass.INCONCLUSIVE,  # it says unknown now
        "dns": FailureClass.INCONCLUSIVE,  # the gate stopped waiting for it
    }
    reasons = {c.component: c.reason for c in got}
    assert reasons["tpm"] == "passed in the baseline of 3815.2.5, failed now"
    assert reasons["storage"] == "failed in the baseline of 3815.2.5 too"
    assert reasons["ingest"] == "not run in the baseline of 3815.2.5"
    assert reasons["app"] == "the check says unknown"
    assert bl.overall(got) is FailureClass.REGRESSION


@pytest.mark.parametrize(
    ("base", "why"),
    [
        (None, "no baseline was taken before this update"),
        (taken(slot="USR-B", tpm="passed"), "taken on this slot (USR-B)"),
        (taken(target="3975.1.0", tpm="passed"), "before an update to 3975.1.0, this is 3975.2.0"),
    ],
)
def test_no_usable_baseline_is_inconclusive(base: Baseline | None, why: str) -> None:
    got = bl.classify([result("tpm", CheckState.FAILED)], base, slot="USR-B", version="3975.2.0")
    assert classes(got) == {"tpm": FailureClass.INCONCLUSIVE}
    assert why in got[0].reason


def test_the_worst_class_is_the_gates() -> None:
    def mk(name: str, cls: FailureClass) -> bl.Classified:
        return bl.Classified(name, cls, "why")

    pre, inc, reg = FailureClass.PRE_EXISTING, FailureClass.INCONCLUSIVE, FailureClass.REGRESSION
    assert bl.overall([mk("a", pre), mk("b", pre)]) is pre
    assert bl.overall([mk("a", pre), mk("b", inc)]) is inc
    assert bl.overall([mk("a", inc), mk("b", reg), mk("c", pre)]) is reg
    assert bl.overall([]) is None
    assert not bl.all_pre_existing([])


def test_classification_never_raises_on_random_baselines() -> None:
    """Whatever a journal's baseline holds (it is read back from disk), every failing check gets one
    class; only a baseline pass makes a regression, only a baseline failure a pre-existing one."""
    rng = random.Random(16)
    states = [*(str(s) for s in CheckState), "", "PASSED", "\x1b[31m", "x" * 300]
    for _ in range(2000):
        names = [rng.choice(["tpm", "storage", "web", "\n", ""]) for _ in range(rng.randint(0, 5))]
        base = taken(
            slot=rng.choice(["USR-A", "USR-B", None]),
            target=rng.choice(["", "3975.2.0", "1"]),
            **{n or "empty": rng.choice(states) for n in names},
        )
        failing = [result(rng.choice(["tpm", "web", "new"]), rng.choice(list(CheckState))) for _ in range(3)]
        got = bl.classify(failing, rng.choice([base, None]), slot="USR-B", version="3975.2.0")
        assert len(got) == len(failing)
        for c, r in zip(got, failing, strict=True):
            before = base.state_of(c.component)
            if c.failure_class is FailureClass.REGRESSION:
                assert before == "passed"
            if c.failure_class is FailureClass.PRE_EXISTING:
                assert before in ("failed", "refused")
            if r.state is CheckState.UNKNOWN:
                assert c.failure_class is FailureClass.INCONCLUSIVE


# --- the driver: the verdict, the record, the journal ------------------------------------------------


def policy_on(state_dir: Path, on_pre_existing: str) -> PolicyFile:
    data = {
        "health_policy": {
            "startup": {"timeout_seconds": 5, "required_components": ["tpm", "storage"]},
            "rollback": {
                "reboot_grace_seconds": 2,
                "reboot_command": ["reboot-stand-in"],
                "on_pre_existing": on_pre_existing,
            },
        },
        "agent": {"state_dir": str(state_dir)},
    }
    return build(PolicyFile, data, Source("test-policy.yaml"))


def with_baseline(state_dir: Path, **states: str) -> None:
    Store.load(state_dir).put_baseline(taken(target=rec.os_version() or "", **states))


def test_a_regression_fails_and_the_record_says_so(tmp_path: Path) -> None:
    with_baseline(tmp_path, tpm="passed", storage="passed")
    out, r, _ = drive(policy(tmp_path), SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)] * 50))
    assert out.verdict.decision is Decision.FAIL and out.verdict.reboot
    assert r.reboots == [("reboot-stand-in",)]
    assert (
        "[regression: tpm: regression (passed in the baseline of 3815.2.5, failed now)]" in out.verdict.reason
    )
    record = journal.read(tmp_path).rollback
    assert record is not None and record.failure_class == "regression"
    tpm = next(c for c in record.components if c.component == "tpm")
    assert (tpm.failure_class, tpm.class_reason) == (
        "regression",
        "passed in the baseline of 3815.2.5, failed now",
    )
    assert next(c for c in record.components if c.component == "storage").failure_class == ""
    assert "class: regression" in rec.format_record(record)


@pytest.mark.parametrize("on_pre_existing", ["fail", "warn"])
def test_a_pre_existing_failure_holds_under_fail_and_is_let_through_under_warn(
    tmp_path: Path, on_pre_existing: str
) -> None:
    with_baseline(tmp_path, tpm="failed", storage="passed")
    p = policy_on(tmp_path, on_pre_existing)
    out, r, clock = drive(p, SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)] * 50))
    gate = journal.read(tmp_path).boot
    assert gate is not None
    assert [(c.component, c.failure_class) for c in gate.failures] == [("tpm", FailureClass.PRE_EXISTING)]
    if on_pre_existing == "fail":
        assert out.verdict.decision is Decision.FAIL and r.reboots == [("reboot-stand-in",)]
        assert gate.verdict is GateVerdict.FAILED
        assert journal.read(tmp_path).rollback is not None
    else:
        assert out.ready and out.verdict.warned and not r.reboots
        assert gate.verdict is GateVerdict.PASSED
        assert "let through (rollback.on_pre_existing: warn): tpm: pre_existing" in gate.reason
        assert journal.read(tmp_path).rollback is None
        assert clock.now >= 105.0  # it waited for the deadline: the check had every chance to pass


def test_warn_never_lets_a_regression_or_an_inconclusive_failure_through(tmp_path: Path) -> None:
    for states in (
        {"tpm": "failed", "storage": "passed"},
        {"tpm": "failed"},
    ):  # storage: regression, then not run
        with_baseline(tmp_path, **states)
        out, _, _ = drive(
            policy_on(tmp_path, "warn"), SlotState.UNMARKED, iter([assessment(tpm=False, storage=False)] * 50)
        )
        assert out.verdict.decision is Decision.FAIL
        assert not out.verdict.warned
        (tmp_path / journal.JOURNAL_NAME).unlink()


def test_no_baseline_is_inconclusive_and_fails_closed(tmp_path: Path) -> None:
    out, r, _ = drive(policy(tmp_path), SlotState.UNMARKED, iter([assessment(tpm=False, storage=True)] * 50))
    assert out.verdict.decision is Decision.FAIL and r.reboots
    assert [c.failure_class for c in out.verdict.classified] == [FailureClass.INCONCLUSIVE]
    record = journal.read(tmp_path).rollback
    assert record is not None and record.failure_class == "inconclusive"
