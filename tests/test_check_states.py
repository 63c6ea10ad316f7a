"""Every check's state, from the engine to the record, the API, the logs and the metrics.

The engine's behaviour (parallel runs, the gate's early stop, skipped phases, start periods, a cancelled
run picked up again) is driven with small check functions of the tests' own, as in tests/test_assess.py;
what the agent shows is read from a real Daemon over HTTP (tests/agent_helpers.py).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piccolod import logs
from piccolod.assess import Assessor, Check
from piccolod.checkspec import Phase
from piccolod.gate import run_gate
from piccolod.hysteresis import Hysteresis, Rule
from piccolod.journal import Store
from piccolod.model import Source, build
from piccolod.policy import PolicyFile
from piccolod.record import format_record
from piccolod.result import CheckResult, CheckState, Outcome, Status
from piccolod.slot import BootSlot, SlotState
from tests.agent_helpers import Switch, get, running_daemon, wait_for
from tests.test_metrics import samples, value


def data(required: list[str], optional: list[str] | None = None, **checks: Any) -> dict[str, Any]:
    return {
        "health_policy": {
            "startup": {"required_components": required, "optional_components": optional or []},
            "runtime": {"check_interval_seconds": 60, "failure_threshold": 1},
            "checks": checks,
        }
    }


def policy(required: list[str], optional: list[str] | None = None, **checks: Any) -> PolicyFile:
    return build(PolicyFile, data(required, optional, **checks), Source("<test>"))


def returns(healthy: bool, state: CheckState | None = None, after: float = 0.0) -> Check:
    def check(p: PolicyFile, timeout: float) -> Outcome:
        time.sleep(after)
        return Outcome(healthy, "fine" if healthy else "broken", {}, state)

    return check


def counted(after: float, calls: list[float]) -> Check:
    def check(p: PolicyFile, timeout: float) -> Outcome:
        calls.append(time.monotonic())
        time.sleep(after)
        return Outcome(True, "slow but fine")

    return check


TCP = {"kind": "tcp", "address": "127.0.0.1:9"}
FIXED = lambda name, p: 5.0  # noqa: E731 - the tests' deadline table


def states(a: Any) -> dict[str, CheckState]:
    return {r.component: r.state for r in a.results}


# --- the engine ------------------------------------------------------------------------------------


def test_the_gate_stops_at_the_first_required_failure_and_reports_every_state() -> None:
    p = policy(["tpm", "slow", "unsure"], ["opt"], slow=TCP, unsure=TCP, opt=TCP)
    table = {
        "tpm": returns(False, after=0.05),
        "slow": returns(True, after=1.0),
        "unsure": returns(False, CheckState.UNKNOWN),
        "opt": returns(False),
    }
    started = time.monotonic()
    a = Assessor(table, FIXED).assess(p, phase=Phase.GATE, stop_on_required_failure=True)
    assert time.monotonic() - started < 0.6
    assert states(a) == {
        "tpm": CheckState.FAILED,
        "opt": CheckState.FAILED,  # an optional failure does not stop the wait: it finished first
        "slow": CheckState.CANCELLED,
        "unsure": CheckState.UNKNOWN,  # unknown does not stop the gate either
    }
    assert a.status is Status.UNHEALTHY and set(a.failing()) == {"tpm", "slow", "unsure", "opt"}
    # Without the early stop (runtime, piccolod check) every check is waited for.
    full = Assessor(table, FIXED).assess(p)
    assert states(full)["slow"] is CheckState.PASSED


def test_a_refused_required_check_stops_the_gate_and_an_optional_failure_does_not() -> None:
    p = policy(["x", "slow"], ["opt"], x=TCP, slow=TCP, opt=TCP)
    table = {"x": returns(False, CheckState.REFUSED), "slow": returns(True, after=0.5), "opt": returns(False)}
    a = Assessor(table, FIXED).assess(p, phase=Phase.GATE, stop_on_required_failure=True)
    assert states(a) == {"opt": CheckState.FAILED, "slow": CheckState.CANCELLED, "x": CheckState.REFUSED}
    only_optional = policy(["slow"], ["opt"], slow=TCP, opt=TCP)
    b = Assessor(table, FIXED).assess(only_optional, phase=Phase.GATE, stop_on_required_failure=True)
    assert states(b) == {"opt": CheckState.FAILED, "slow": CheckState.PASSED}


def test_a_required_check_in_its_start_period_does_not_stop_the_gate() -> None:
    p = policy(["tpm", "slow"], slow=TCP, tpm={"start_period_seconds": 60})
    table = {"tpm": returns(False), "slow": returns(True, after=0.3)}
    young = Assessor(table, FIXED).assess(p, phase=Phase.GATE, stop_on_required_failure=True)
    assert states(young) == {"tpm": CheckState.FAILED, "slow": CheckState.PASSED}
    old = Assessor(table, FIXED, since=time.monotonic() - 61)
    assert (
        states(old.assess(p, phase=Phase.GATE, stop_on_required_failure=True))["slow"] is CheckState.CANCELLED
    )


def test_run_on_skips_a_phase_and_a_skipped_check_does_not_count() -> None:
    p = policy(
        ["tpm", "late"], ["early"], late={**TCP, "run_on": ["runtime"]}, early={**TCP, "run_on": ["gate"]}
    )
    table = {"tpm": returns(True), "late": returns(False), "early": returns(False)}
    gate = Assessor(table, FIXED).assess(p, phase=Phase.GATE)
    assert states(gate) == {"tpm": CheckState.PASSED, "early": CheckState.FAILED, "late": CheckState.SKIPPED}
    late = gate.result("late")
    assert late is not None and late.reason == "skipped: runs only in the runtime" and not late.counted
    assert gate.status is Status.UNHEALTHY  # early, the only optional check, fails; late does not count
    runtime = Assessor(table, FIXED).assess(p, phase=Phase.RUNTIME)
    assert states(runtime)["early"] is CheckState.SKIPPED and runtime.failing() == ("late",)


def test_a_cancelled_run_is_picked_up_by_the_next_attempt_not_run_twice() -> None:
    calls: list[float] = []
    p = policy(["tpm", "slow"], slow=TCP)
    assessor = Assessor({"tpm": returns(False), "slow": counted(0.6, calls)}, FIXED)
    first = assessor.assess(p, phase=Phase.GATE, stop_on_required_failure=True)
    assert states(first)["slow"] is CheckState.CANCELLED
    second = assessor.assess(p, phase=Phase.GATE)
    slow = second.result("slow")
    assert slow is not None and slow.state is CheckState.PASSED and slow.duration_seconds >= 0.55
    assert len(calls) == 1


# --- runtime thresholds per check -------------------------------------------------------------------


def result(name: str, healthy: bool) -> CheckResult:
    return CheckResult(name, healthy, "ok" if healthy else "down", {}, 0.0, 0.0, True)


def run_through(h: Hysteresis, name: str, sequence: str) -> list[tuple[bool, str]]:
    from piccolod.assess import Assessment, verdict

    out = []
    for c in sequence:
        r = result(name, c == "+")
        eff = h.apply(Assessment(verdict([r]), (r,), 0.0, 0.0))
        out.append((eff.results[0].healthy, eff.results[0].reason.split(":")[0]))
    return out


def test_each_check_has_its_own_thresholds() -> None:
    rules = {"web": Rule(failure_threshold=1, success_threshold=3), "tpm": Rule(failure_threshold=3)}
    h = Hysteresis(2, rules=lambda n: rules[n])
    assert run_through(h, "web", "+-+++") == [
        (True, "ok"), (False, "down"),
        (False, "recovering (1 of 3 consecutive passes before it counts)"),
        (False, "recovering (2 of 3 consecutive passes before it counts)"), (True, "ok"),
    ]  # fmt: skip
    assert run_through(h, "tpm", "+--") == [
        (True, "ok"), (True, "failing (1 of 3 consecutive failures before it counts)"),
        (True, "failing (2 of 3 consecutive failures before it counts)"),
    ]  # fmt: skip


def test_a_start_period_holds_failures_of_a_check_never_healthy_until_it_ends() -> None:
    now = [0.0]
    h = Hysteresis(1, rules=lambda n: Rule(1, 1, 30.0), clock=lambda: now[0])
    assert run_through(h, "app", "-") == [(True, "starting (30s of its start period left)")]
    now[0] = 31.0
    assert run_through(h, "app", "-") == [(False, "down")]
    h2 = Hysteresis(1, rules=lambda n: Rule(1, 1, 30.0), clock=lambda: now[0] - 31.0)
    assert run_through(h2, "app", "+-") == [(True, "ok"), (False, "down")]  # once healthy, no more credit


def test_checks_that_did_not_run_keep_their_effective_result() -> None:
    from piccolod.assess import Assessment, verdict

    h = Hysteresis(3)
    both = (result("a", True), result("b", True))
    h.apply(Assessment(verdict(both), both, 0.0, 0.0))
    failing = (result("a", False), result("b", False))
    eff = h.apply(Assessment(verdict(failing), failing, 0.0, 0.0), fresh={"a"})
    assert [(r.component, r.healthy, r.reason[:7]) for r in eff.results] == [
        ("a", True, "failing"),
        ("b", True, "ok"),
    ]
    assert h.failures == {"a": 1, "b": 0}


# --- what the agent shows ---------------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(logs.LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logs.setup(out, json_lines=True)
    yield out
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_each_check_runs_on_its_own_interval(log_lines: io.StringIO) -> None:
    fast, slow = Switch(), Switch()
    d = data(["tpm"], ["web"], tpm={"interval_seconds": 0.2, "timeout_seconds": 0.1}, web=TCP)
    with running_daemon({"tpm": fast, "web": slow}, d) as (_daemon, port):
        # counted once the run is recorded: a call in progress is in ``fast.calls``, not yet in the metrics
        counted = "piccolod_health_check_duration_seconds_count"
        wait_for(lambda: value(get(port, "/metrics")[2].decode(), counted, component="tpm") >= 5, timeout=10,
                 what="five recorded runs of the fast check")  # fmt: skip
        text = get(port, "/metrics")[2].decode()
    assert slow.calls == 1
    assert value(text, counted, component="web") == 1
    assert value(text, counted, component="tpm") >= 5
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert sum(r.get("component") == "web" and "healthy" in r for r in records) == 1  # logged when it ran


def test_the_api_and_the_metrics_show_every_check(log_lines: io.StringIO) -> None:
    d = data(
        ["tpm", "web"],
        ["late"],
        web=TCP,
        late={**TCP, "run_on": ["gate"]},
        off={**TCP, "enabled": False},
        spare={"kind": "dns", "name": "example.com"},
        storage={"enabled": False},
    )
    d["health_policy"]["startup"]["required_components"].append("storage")
    d["health_policy"]["startup"]["optional_components"].append("off")
    table = {
        "tpm": Switch(),
        "web": Switch(False, {"status_code": 503}),
        "late": Switch(),
        "storage": Switch(),
    }
    with running_daemon(table, d) as (_daemon, port):
        status, _, body = get(port, "/api/v1/system/health")
        text = get(port, "/metrics")[2].decode()
    doc = json.loads(body)
    assert status == 503 and doc["status"] == "unhealthy"
    checks = doc["checks"]
    assert checks["web"] == {
        "kind": "tcp", "enabled": True, "required": True, "run_on": ["gate", "runtime"], "state": "failed",
        "reason": "down",
    }  # fmt: skip
    assert (
        checks["late"]["state"] == "skipped" and checks["late"]["reason"] == "skipped: runs only in the gate"
    )
    assert checks["off"] == {
        "kind": "tcp", "enabled": False, "required": False, "run_on": ["gate", "runtime"],
        "state": "disabled", "reason": "enabled: false",
    }  # fmt: skip
    assert checks["spare"]["state"] == "disabled" and checks["spare"]["required"] is None
    assert checks["spare"]["reason"] == "not named in startup.required_components or optional_components"
    assert checks["storage"]["state"] == "disabled" and checks["docker"]["state"] == "disabled"
    assert checks["tpm"] == {
        "kind": "tpm", "enabled": True, "required": True, "run_on": ["gate", "runtime"], "state": "passed",
        "reason": "up",
    }  # fmt: skip
    comps = doc["components"]
    assert comps["web"]["status"] == "unhealthy" and comps["web"]["kind"] == "tcp"
    assert comps["web"]["details"] == {"status_code": 503}
    assert comps["late"]["status"] == "skipped"
    assert "off" not in comps and "spare" not in comps and comps["storage"]["status"] == "not_checked"
    for name, enabled in (("tpm", 1), ("web", 1), ("late", 1), ("off", 0), ("spare", 0), ("storage", 0)):
        assert value(text, "piccolod_check_enabled", component=name) == enabled
    got = samples(text)
    for name, state in (("web", "failed"), ("late", "skipped"), ("off", "disabled"), ("tpm", "passed")):
        row = {s: got["piccolod_check_state", (("component", name), ("state", s))] for s in CheckState}
        assert row == {s: (1.0 if s == state else 0.0) for s in CheckState}, name
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    disabled = next(r["disabled"] for r in records if "disabled" in r)
    assert disabled == {
        "docker": "not named in startup.required_components or optional_components",
        "containers": "not named in startup.required_components or optional_components",
        "network": "not named in startup.required_components or optional_components",
        "api": "not named in startup.required_components or optional_components",
        "storage": "enabled: false",
        "off": "enabled: false",
        "spare": "not named in startup.required_components or optional_components",
    }
    assert {r["component"]: r["state"] for r in records if "healthy" in r} == {
        "tpm": "passed", "web": "failed", "late": "skipped",
    }  # fmt: skip


def test_the_rollback_record_keeps_every_state(tmp_path: Path) -> None:
    d = data(["tpm", "slow"], ["opt"], slow=TCP, opt=TCP)
    d["health_policy"]["startup"]["timeout_seconds"] = 0.5
    d["health_policy"]["rollback"] = {"reboot_grace_seconds": 0}
    d["agent"] = {"state_dir": str(tmp_path)}
    p = build(PolicyFile, d, Source("<test>"))
    release = threading.Event()

    def hangs(pol: PolicyFile, timeout: float) -> Outcome:
        release.wait(30)
        return Outcome(True, "late")

    assessor = Assessor(
        {"tpm": returns(False, after=0.2), "slow": hangs, "opt": returns(False, CheckState.UNKNOWN)}, FIXED
    )
    slot = BootSlot("e03dd35c-7c2d-4a47-b3fe-27f15780a57c", "/disk.img", "USR-B", SlotState.UNMARKED)
    try:
        out = run_gate(
            p, slot, lambda: assessor.assess(p, phase=Phase.GATE, stop_on_required_failure=True),
            notify=lambda *a, **k: True, boot_id="boot-1", store=Store.load(tmp_path), sleep=lambda s: None,
            reboot=lambda argv: None,
        )  # fmt: skip
    finally:
        release.set()
    assert not out.ready and out.record is not None
    # The failing required check, and its class: no baseline here, so inconclusive (tests/test_baseline.py).
    assert out.verdict.reason == (
        "required components failing: tpm [inconclusive: tpm: inconclusive (no baseline was taken before "
        "this update)]"
    )
    assert [(c.component, c.state, c.healthy) for c in out.record.components] == [
        ("tpm", "failed", False), ("opt", "unknown", False), ("slow", "cancelled", False),
    ]  # fmt: skip
    text = format_record(out.record)
    assert "  FAIL tpm " in text and "  UNKNOWN opt " in text and "  CANCELLED slow " in text
