"""The assessment engine: concurrency, per-component deadlines, failures, verdicts and hysteresis.

The engine's job is concurrency and deadlines, so these tests give it small real check functions of
their own (sleeping, raising, hanging on an event) instead of the machine's checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piccolod.assess import STILL_RUNNING, Assessor, Check, verdict
from piccolod.hysteresis import Hysteresis
from piccolod.model import Source, build
from piccolod.policy import AllOptionalFailed, Component, PolicyFile
from piccolod.result import CheckResult, Outcome, Status

ALL = [str(c) for c in Component]


def policy(
    required: list[str], optional: list[str] | None = None, *, all_failed: str = "unhealthy", **runtime: Any
) -> PolicyFile:
    startup = {"required_components": required, "optional_components": optional or []}
    data: dict[str, Any] = {
        "health_policy": {"startup": {**startup, "optional_all_failed": all_failed}, "runtime": runtime}
    }
    return build(PolicyFile, data, Source("<test>"))


def ok(reason: str = "fine") -> Check:
    def check(p: PolicyFile, timeout: float) -> Outcome:
        return Outcome(True, reason, {"timeout": timeout})

    return check


def bad(reason: str = "broken") -> Check:
    def check(p: PolicyFile, timeout: float) -> Outcome:
        return Outcome(False, reason)

    return check


def sleeping(seconds: float) -> Check:
    def check(p: PolicyFile, timeout: float) -> Outcome:
        time.sleep(seconds)
        return Outcome(True, f"slept {seconds}")

    return check


def raising(exc: BaseException) -> Check:
    def check(p: PolicyFile, timeout: float) -> Outcome:
        raise exc

    return check


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung checks wait on; set at the end so their abandoned threads finish."""
    ev = threading.Event()
    yield ev
    ev.set()


def hanging(release: threading.Event, calls: list[float] | None = None) -> Check:
    def check(p: PolicyFile, timeout: float) -> Outcome:
        if calls is not None:
            calls.append(time.monotonic())
        release.wait(60)
        return Outcome(True, "released")

    return check


def fixed(seconds: float) -> Callable[[Component, PolicyFile], float]:
    return lambda c, p: seconds


def table(**checks: Check) -> dict[Component, Check]:
    return {Component(k): v for k, v in checks.items()}


def test_all_healthy_runs_only_listed_components_in_policy_order() -> None:
    checks = {c: ok(f"{c} ok") for c in Component}
    a = Assessor(checks, fixed(1.0)).assess(policy(["tpm", "api"], ["storage"]))
    assert a.status is Status.HEALTHY
    assert [r.component for r in a.results] == [Component.TPM, Component.STORAGE, Component.API]
    assert [r.required for r in a.results] == [True, False, True]
    assert a.result(Component.TPM) is not None
    assert a.result(Component.DOCKER) is None
    assert a.results[0].details == {"timeout": 1.0}  # the check was told its deadline


def test_checks_run_concurrently() -> None:
    checks = {c: sleeping(0.4) for c in Component}
    started = time.monotonic()
    a = Assessor(checks, fixed(5.0)).assess(policy(ALL))
    wall = time.monotonic() - started
    assert a.status is Status.HEALTHY
    assert len(a.results) == 6
    assert wall < 0.4 * 1.5, f"six 0.4 s checks took {wall:.2f}s: not concurrent"


def test_exception_becomes_that_components_failure_with_reason() -> None:
    checks = table(tpm=raising(OSError(5, "Input/output error")), storage=ok(), api=ok())
    a = Assessor(checks, fixed(1.0)).assess(policy(["tpm", "storage", "api"]))
    tpm = a.result(Component.TPM)
    assert tpm is not None
    assert not tpm.healthy
    assert tpm.reason == "OSError: [Errno 5] Input/output error"
    assert a.status is Status.UNHEALTHY
    assert a.failing() == (Component.TPM,)


def test_base_exception_and_wrong_return_type_are_failures() -> None:
    def returns_none(p: PolicyFile, timeout: float) -> Outcome:
        return None  # type: ignore[return-value]

    checks = table(tpm=raising(SystemExit(3)), api=returns_none, storage=raising(RuntimeError()))
    a = Assessor(checks, fixed(1.0)).assess(policy(["tpm", "storage", "api"]))
    reasons = {r.component: r.reason for r in a.results}
    assert reasons[Component.TPM] == "SystemExit: 3"
    assert reasons[Component.API] == "check returned NoneType, not an Outcome"
    assert reasons[Component.STORAGE] == "RuntimeError"


def test_hung_check_fails_at_its_own_deadline_and_others_keep_theirs(release: threading.Event) -> None:
    deadlines = {Component.TPM: 0.3, Component.STORAGE: 2.0, Component.API: 2.0}
    checks = table(tpm=hanging(release), storage=sleeping(0.1), api=ok())
    assessor = Assessor(checks, lambda c, p: deadlines[c], grace=0.1)
    started = time.monotonic()
    a = assessor.assess(policy(["tpm", "storage", "api"]))
    wall = time.monotonic() - started
    tpm = a.result(Component.TPM)
    assert tpm is not None
    assert not tpm.healthy
    assert tpm.reason == "no answer within 0.3s"
    assert 0.3 <= wall < 0.3 + 0.5, wall
    assert a.result(Component.STORAGE) is not None
    assert [r.healthy for r in a.results] == [False, True, True]
    assert assessor.in_flight() == (Component.TPM,)


def test_a_hung_check_is_not_started_again_while_it_runs(release: threading.Event) -> None:
    calls: list[float] = []
    checks = table(tpm=hanging(release, calls), api=ok())
    assessor = Assessor(checks, fixed(0.1), grace=0.0)
    threads_before = threading.active_count()
    for _ in range(5):
        a = assessor.assess(policy(["tpm", "api"]))
    assert len(calls) == 1, "a hung check must not be called again while its first call runs"
    tpm = a.result(Component.TPM)
    assert tpm is not None
    assert tpm.reason.startswith(STILL_RUNNING), tpm.reason
    assert tpm.duration_seconds == 0.0
    assert threading.active_count() <= threads_before + 1
    # Once it returns, the next assessment calls it again.
    release.set()
    deadline = time.monotonic() + 5
    while assessor.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assessor.in_flight() == ()
    a = assessor.assess(policy(["tpm", "api"]))
    assert len(calls) == 2
    assert a.status is Status.HEALTHY


def test_broken_timeout_table_and_missing_check_fail_only_that_component() -> None:
    def timeout_for(c: Component, p: PolicyFile) -> float:
        if c is Component.STORAGE:
            raise KeyError("storage")
        return 1.0

    a = Assessor(table(storage=ok(), api=ok()), timeout_for).assess(policy(["storage", "api"], ["tpm"]))
    reasons = {r.component: (r.healthy, r.reason) for r in a.results}
    assert reasons[Component.STORAGE] == (False, "no deadline: KeyError: 'storage'")
    assert reasons[Component.TPM] == (False, "no check is implemented for component 'tpm'")
    assert reasons[Component.API] == (True, "fine")
    assert a.status is Status.UNHEALTHY


def test_optional_failure_degrades_required_failure_is_unhealthy() -> None:
    p = policy(["tpm", "storage", "api"], ["docker", "network"])
    checks = {c: ok() for c in Component}
    assert Assessor(checks, fixed(1)).assess(p).status is Status.HEALTHY
    checks[Component.NETWORK] = bad()
    assert Assessor(checks, fixed(1)).assess(p).status is Status.DEGRADED
    checks[Component.TPM] = bad()
    assert Assessor(checks, fixed(1)).assess(p).status is Status.UNHEALTHY


def test_containers_follow_docker_unless_listed() -> None:
    checks = {c: ok() for c in Component}
    checks[Component.CONTAINERS] = bad("one unhealthy container")
    optional_docker = policy(["tpm"], ["docker"])
    assert [r.component for r in Assessor(checks, fixed(1)).assess(optional_docker).results] == [
        Component.DOCKER,
        Component.CONTAINERS,
        Component.TPM,
    ]
    assert Assessor(checks, fixed(1)).assess(optional_docker).status is Status.DEGRADED
    assert Assessor(checks, fixed(1)).assess(policy(["docker"])).status is Status.UNHEALTHY
    # Listing containers as optional lowers its weight below docker's (as the only optional component,
    # its failure is "every optional component fails": unhealthy unless the policy relaxes that).
    relaxed = policy(["docker"], ["containers"], all_failed="degraded")
    assert Assessor(checks, fixed(1)).assess(relaxed).status is Status.DEGRADED
    assert Assessor(checks, fixed(1)).assess(policy(["docker"], ["containers"])).status is Status.UNHEALTHY


def test_the_seeds_stricter_rule_is_one_policy_edit() -> None:
    """Seed rule: every component is required, so any failure makes the machine unhealthy."""
    checks = {c: ok() for c in Component}
    checks[Component.NETWORK] = bad("no route")
    default = policy(["tpm", "storage", "api"], ["docker", "network"])
    stricter = policy(["tpm", "storage", "api", "docker", "network"])  # the one edit
    assert Assessor(checks, fixed(1)).assess(default).status is Status.DEGRADED
    assert Assessor(checks, fixed(1)).assess(stricter).status is Status.UNHEALTHY


def _result(comp: str, healthy: bool, required: bool = True) -> CheckResult:
    return CheckResult(comp, healthy, "r", {}, 0.0, 0.0, required)


def test_verdict_of_nothing_is_healthy() -> None:
    assert verdict([]) is Status.HEALTHY
    assert verdict([_result(Component.TPM, True, required=True)]) is Status.HEALTHY


def test_every_optional_component_failing_is_unhealthy_unless_relaxed() -> None:
    """The original design's graceful degradation: no containers and no network is not a working
    machine, however healthy its TPM, storage and API are."""
    p = policy(["tpm", "storage", "api"], ["docker", "network"])
    checks = {c: ok() for c in Component}
    checks[Component.NETWORK] = bad("no route")
    assert Assessor(checks, fixed(1)).assess(p).status is Status.DEGRADED  # some optional ones fail
    checks[Component.DOCKER] = bad("engine down")
    checks[Component.CONTAINERS] = bad("cannot list")
    a = Assessor(checks, fixed(1)).assess(p)
    assert a.status is Status.UNHEALTHY and a.optional_all_failed is AllOptionalFailed.UNHEALTHY
    offline = policy(["tpm", "storage", "api"], ["docker", "network"], all_failed="degraded")
    assert Assessor(checks, fixed(1)).assess(offline).status is Status.DEGRADED
    checks[Component.TPM] = bad()
    assert Assessor(checks, fixed(1)).assess(offline).status is Status.UNHEALTHY  # required still rules


def test_hysteresis_keeps_the_policys_rule() -> None:
    checks = {c: ok() for c in Component}
    checks[Component.NETWORK] = bad("no route")
    for rule, expected in (("unhealthy", Status.UNHEALTHY), ("degraded", Status.DEGRADED)):
        raw = Assessor(checks, fixed(1)).assess(policy(["tpm"], ["network"], all_failed=rule))
        assert Hysteresis(3).apply(raw).status is expected  # never healthy before: no credit


_results_st = st.lists(
    st.tuples(st.sampled_from(list(Component)), st.booleans(), st.booleans()),
    unique_by=lambda t: t[0],
)


@given(results=_results_st, rule=st.sampled_from(list(AllOptionalFailed)))
def test_verdict_properties(results: list[tuple[Component, bool, bool]], rule: AllOptionalFailed) -> None:
    rs = [_result(c, healthy, required) for c, healthy, required in results]
    status = verdict(rs, rule)
    required = [r for r in rs if r.required]
    optional = [r for r in rs if not r.required]
    if any(not r.healthy for r in required):
        assert status is Status.UNHEALTHY
    elif optional and all(not r.healthy for r in optional):
        assert status is (Status.UNHEALTHY if rule is AllOptionalFailed.UNHEALTHY else Status.DEGRADED)
    elif any(not r.healthy for r in optional):
        assert status is Status.DEGRADED
    else:
        assert status is Status.HEALTHY
    # Monotone: healing a failing component never makes the verdict worse.
    order = [Status.HEALTHY, Status.DEGRADED, Status.UNHEALTHY]
    for i, r in enumerate(rs):
        if not r.healthy:
            healed = [*rs[:i], _result(r.component, True, r.required), *rs[i + 1 :]]
            assert order.index(verdict(healed, rule)) <= order.index(status)
    # The relaxed rule is never stricter than the default one.
    assert order.index(verdict(rs, AllOptionalFailed.DEGRADED)) <= order.index(verdict(rs))


def test_hysteresis_needs_threshold_consecutive_failures() -> None:
    flaky = {"healthy": True}

    def tpm(p: PolicyFile, timeout: float) -> Outcome:
        return Outcome(flaky["healthy"], "tpm says so")

    assessor = Assessor(table(tpm=tpm, api=ok()), fixed(1))
    p = policy(["tpm", "api"], failure_threshold=3)
    h = Hysteresis(p.health_policy.runtime.failure_threshold)
    seen = []
    for healthy in [True, False, False, True, False, False, False, False, True]:
        flaky["healthy"] = healthy
        eff = h.apply(assessor.assess(p))
        seen.append(eff.status)
    u, ok_ = Status.UNHEALTHY, Status.HEALTHY
    assert seen == [ok_, ok_, ok_, ok_, ok_, ok_, u, u, ok_]


def test_hysteresis_gives_no_credit_to_a_component_never_seen_healthy() -> None:
    h = Hysteresis(3)
    raw = Assessor(table(tpm=bad("no TPM")), fixed(1)).assess(policy(["tpm"]))
    assert h.apply(raw).status is Status.UNHEALTHY
    assert h.apply(raw).status is Status.UNHEALTHY


def test_hysteresis_reason_says_it_is_failing() -> None:
    h = Hysteresis(2)
    h.apply(Assessor(table(tpm=ok()), fixed(1)).assess(policy(["tpm"])))
    raw = Assessor(table(tpm=bad("no TPM")), fixed(1)).assess(policy(["tpm"]))
    eff = h.apply(raw)
    assert raw.status is Status.UNHEALTHY
    assert eff.status is Status.HEALTHY
    assert eff.results[0].reason == "failing (1 of 2 consecutive failures before it counts): no TPM"
    eff = h.apply(raw)
    assert eff.status is Status.UNHEALTHY
    assert eff.results[0].reason == "no TPM"
    assert h.failures[Component.TPM] == 2


def test_hysteresis_threshold_one_is_immediate() -> None:
    raw = Assessor(table(tpm=bad()), fixed(1)).assess(policy(["tpm"]))
    assert Hysteresis(1).apply(raw).status is Status.UNHEALTHY
    with pytest.raises(ValueError, match="at least 1"):
        Hysteresis(0)


def test_cancel_ends_a_waiting_assessment_at_once(release: threading.Event) -> None:
    """SIGTERM while a check hangs: the assessment stops waiting for it and gives no verdict."""
    from piccolod.assess import CANCEL_POLL_SECONDS, Cancelled

    assessor = Assessor(table(tpm=hanging(release), api=ok()), fixed(60.0))
    p = policy(["tpm", "api"])
    timer = threading.Timer(0.2, assessor.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        assessor.assess(p)
    took = time.monotonic() - started
    timer.join()
    assert 0.2 <= took < 0.2 + CANCEL_POLL_SECONDS + 0.2, took
    assert assessor.cancelled
    started = time.monotonic()
    with pytest.raises(Cancelled):  # later assessments do not start checks at all
        assessor.assess(p)
    assert time.monotonic() - started < 0.05


def test_abandoned_check_threads_are_daemon_threads(release: threading.Event) -> None:
    assessor = Assessor(table(tpm=hanging(release)), fixed(0.1), grace=0.0)
    assessor.assess(policy(["tpm"]))
    hung = [t for t in threading.enumerate() if t.name == "check-tpm"]
    assert hung, "the hung check's thread should still be running"
    assert all(t.daemon for t in hung)
