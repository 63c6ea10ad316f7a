"""One assessment: every checked component of the policy, run concurrently, each under its own deadline.

Each check runs in its own daemon thread and gets ``timeout_for(component, policy)`` seconds (the check is
told its timeout and should honour it; the engine waits :data:`GRACE_SECONDS` longer so a check that does
honour it reports its own reason). A check that raises becomes that component's failure with the
exception as the reason; a check that overruns its deadline becomes a failure "no answer within Ns" and its
thread is abandoned, never joined. An :class:`Assessor` keeps at most one call in flight per component: if
the previous call of a component overran its deadline and is still running when the next assessment
starts, that component fails with "still running from previous assessment" and no new thread is started,
so hung checks cannot pile up threads across runs. A previous call still within its deadline (an
assessment stopped waiting for it early) is waited for again instead of being started twice.

With ``stop_on_required_failure`` (the first-boot gate) the engine stops waiting at the first required
check that fails or is refused: the checks still running are reported ``cancelled`` and left to finish in
the background (the next assessment picks their answer up). A check in its ``start_period_seconds`` that
has not passed yet does not stop it. Checks whose ``run_on`` leaves out the phase are reported
``skipped`` and do not count.

:meth:`Assessor.cancel` (the agent is stopping: SIGTERM) ends the wait of a running assessment within
:data:`CANCEL_POLL_SECONDS`, which then raises :class:`Cancelled` instead of returning a verdict made of
interrupted checks; later assessments raise at once. The checks' threads are daemon threads, so a check
that never returns cannot hold up the process's exit either.

The verdict follows docs/agent.md: ``unhealthy`` when a required component fails, or when every optional
component fails (``startup.optional_all_failed: unhealthy``, the default; ``degraded`` relaxes that for a
site that runs offline); ``degraded`` when some but not all optional ones fail; ``healthy`` otherwise.
Which components are required is the policy's business (:meth:`HealthPolicy.required`); making every
component required is the seed's stricter rule.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from piccolod.checkspec import Phase
from piccolod.policy import AllOptionalFailed, PolicyFile
from piccolod.result import CheckResult, CheckState, Outcome, Status

Check = Callable[[PolicyFile, float], Outcome]
# Keyed by a check's name: a Component member for a built-in check, a str for one of the operator's
# (Any, so that a table or function written for the built-ins alone fits too).
Table = Mapping[Any, Check]
TimeoutFor = Callable[[Any, PolicyFile], float]
Resolve = Callable[[str, PolicyFile], Check | None]

GRACE_SECONDS = 0.25
CANCEL_POLL_SECONDS = 0.05
STILL_RUNNING = "still running from previous assessment"
STOPS_THE_GATE = (CheckState.FAILED, CheckState.REFUSED)


class Cancelled(Exception):
    """The assessment was cancelled (the agent is stopping): there is no verdict."""

    def __init__(self) -> None:
        super().__init__("assessment cancelled: the agent is stopping")


@dataclass(frozen=True)
class Assessment:
    """The verdict over all checked components, with each component's result in policy order."""

    status: Status
    results: tuple[CheckResult, ...]
    started: float  # wall clock (time.time()) when the assessment began
    duration_seconds: float
    optional_all_failed: AllOptionalFailed = AllOptionalFailed.UNHEALTHY  # the rule it was judged by

    def result(self, component: str) -> CheckResult | None:
        return next((r for r in self.results if r.component == component), None)

    def failing(self) -> tuple[str, ...]:
        return tuple(r.component for r in self.results if not r.healthy and r.counted)


def verdict(
    results: Iterable[CheckResult], optional_all_failed: AllOptionalFailed = AllOptionalFailed.UNHEALTHY
) -> Status:
    """``unhealthy`` if a required component fails, or every optional one does (unless
    ``optional_all_failed`` is ``degraded``); ``degraded`` if some optional ones fail. A check skipped in
    this phase does not count."""
    optional = failed = 0
    for r in results:
        if not r.counted:
            continue
        if r.required:
            if not r.healthy:
                return Status.UNHEALTHY
            continue
        optional += 1
        failed += not r.healthy
    if not failed:
        return Status.HEALTHY
    if failed == optional and optional_all_failed is AllOptionalFailed.UNHEALTHY:
        return Status.UNHEALTHY
    return Status.DEGRADED


def default_table() -> tuple[Resolve, TimeoutFor]:
    """The real checks of ``piccolod.checks`` (imported on first use, so the CLI starts fast)."""
    mod = importlib.import_module("piccolod.checks")
    return cast(Resolve, mod.check_for), cast(TimeoutFor, mod.timeout_for)


class _Call:
    """One running check: its thread fills in ``outcome`` or ``error`` and sets ``done``."""

    __slots__ = ("_listeners", "deadline", "done", "error", "finished", "outcome", "started", "timeout")

    def __init__(self, timeout: float, grace: float) -> None:
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.finished = 0.0
        self.timeout = timeout
        self.deadline = self.started + timeout + grace
        self._listeners: list[threading.Event] = []

    def run(self, check: Check, policy: PolicyFile, timeout: float) -> None:
        try:
            self.outcome = check(policy, timeout)
        except BaseException as exc:  # any failure of a check is that component's failure
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self.done.set()
            for listener in tuple(self._listeners):
                listener.set()

    def listen(self, wake: threading.Event) -> None:
        """Set ``wake`` when this call ends (at once if it has)."""
        self._listeners.append(wake)
        if self.done.is_set():
            wake.set()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class _Pending:
    """A check an assessment waits for: its call and whether it is required."""

    call: _Call
    required: bool


class Assessor:
    """Runs assessments with a fixed check table; remembers calls that are still in flight."""

    def __init__(
        self,
        checks: Table | None = None,
        timeout_for: TimeoutFor | None = None,
        *,
        grace: float = GRACE_SECONDS,
        since: float | None = None,
    ) -> None:
        """``checks``: a fixed table (tests); default the registry, which knows every kind. ``since``:
        when the agent started (``time.monotonic()``), the start of every check's start period."""
        if checks is None or timeout_for is None:
            real_resolve, real_timeout_for = default_table()
            timeout_for = real_timeout_for if timeout_for is None else timeout_for
        if checks is not None:
            table = checks
            self._resolve: Resolve = lambda name, policy: table.get(name)
        else:
            self._resolve = real_resolve
        self.timeout_for: TimeoutFor = timeout_for
        self.grace = grace
        self.since = time.monotonic() if since is None else since
        self._inflight: dict[str, _Call] = {}
        self._passed: set[str] = set()  # checks that passed at least once (their start period is over)
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop waiting for checks: a running :meth:`assess` and every later one raise :class:`Cancelled`.

        Safe to call from a signal handler (it only sets an event).
        """
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def in_flight(self) -> tuple[str, ...]:
        """Components whose last call has not returned yet (hung or slow)."""
        with self._lock:
            return tuple(c for c, call in self._inflight.items() if not call.done.is_set())

    def assess(
        self,
        policy: PolicyFile,
        components: Iterable[str] | None = None,
        *,
        phase: Phase = Phase.RUNTIME,
        stop_on_required_failure: bool = False,
    ) -> Assessment:
        """Run the checks of ``components`` (default: what the policy checks) and return the verdict.

        Raises :class:`Cancelled` if :meth:`cancel` was called before or while it runs.
        """
        if self._cancelled.is_set():
            raise Cancelled
        hp = policy.health_policy
        wanted = tuple(hp.checked() if components is None else components)
        started_wall = time.time()
        started = time.monotonic()
        results: dict[str, CheckResult] = {}
        pending: dict[str, _Pending] = {}
        for name in wanted:
            required = hp.required(name)
            if not hp.runs_in(name, phase):
                only = " and ".join(str(p) for p in hp.options(name).run_on)
                results[name] = self._result(
                    name, required, False, f"skipped: runs only in the {only}", state=CheckState.SKIPPED
                )
                continue
            call, refusal = self._start(name, policy)
            if call is None:
                results[name] = self._result(name, required, False, refusal or "not run")
            else:
                pending[name] = _Pending(call, required)
        self._wait(policy, pending, results, stop_on_required_failure)
        ordered = tuple(results[name] for name in wanted)
        rule = hp.startup.optional_all_failed
        return Assessment(
            status=verdict(ordered, rule),
            results=ordered,
            started=started_wall,
            duration_seconds=time.monotonic() - started,
            optional_all_failed=rule,
        )

    def _start(self, comp: str, policy: PolicyFile) -> tuple[_Call | None, str | None]:
        check = self._resolve(comp, policy)
        if check is None:
            return None, f"no check is implemented for component '{comp}'"
        try:
            timeout = float(self.timeout_for(comp, policy))
        except Exception as exc:  # a broken timeout table fails that component only
            return None, f"no deadline: {_describe(exc)}"
        with self._lock:
            previous = self._inflight.get(comp)
            if previous is not None and not previous.done.is_set():
                if time.monotonic() < previous.deadline:  # an earlier assessment stopped waiting for it
                    return previous, None
                running = time.monotonic() - previous.started
                return None, f"{STILL_RUNNING} (running for {running:.1f}s)"
            call = _Call(timeout, self.grace)
            self._inflight[comp] = call
        thread = threading.Thread(
            target=call.run, args=(check, policy, timeout), name=f"check-{comp}", daemon=True
        )
        thread.start()
        return call, None

    def _wait(
        self,
        policy: PolicyFile,
        pending: dict[str, _Pending],
        results: dict[str, CheckResult],
        stop_on_required_failure: bool,
    ) -> None:
        """Collect every pending call as it ends or its deadline passes; with ``stop_on_required_failure``
        the first required failure cancels the wait for the rest."""
        wake = threading.Event()
        for item in pending.values():
            item.call.listen(wake)
        stopper: str | None = None
        while pending:
            wake.clear()
            now = time.monotonic()
            for name, item in list(pending.items()):
                if item.call.done.is_set() or now >= item.call.deadline:
                    res = self._collected(name, item)
                    results[name] = res
                    del pending[name]
                    if stopper is None and stop_on_required_failure and self._stops(policy, res):
                        stopper = name
            if stopper is not None:
                for name, item in pending.items():
                    results[name] = self._result(
                        name,
                        item.required,
                        False,
                        f"cancelled: the gate stopped waiting once the required check '{stopper}' failed",
                        duration=time.monotonic() - item.call.started,
                        state=CheckState.CANCELLED,
                    )
                return
            if not pending:
                return
            if self._cancelled.is_set():
                raise Cancelled
            left = min(item.call.deadline for item in pending.values()) - time.monotonic()
            wake.wait(max(0.0, min(left, CANCEL_POLL_SECONDS)))

    def _stops(self, policy: PolicyFile, res: CheckResult) -> bool:
        """Whether ``res`` ends the gate's wait: a required failure, outside its start period."""
        if not res.required or res.state not in STOPS_THE_GATE:
            return False
        period = policy.health_policy.options(res.component).start_period_seconds
        return res.component in self._passed or time.monotonic() - self.since >= period

    def _result(
        self,
        comp: str,
        required: bool,
        healthy: bool,
        reason: str,
        details: Mapping[str, object] | None = None,
        *,
        duration: float = 0.0,
        state: CheckState | None = None,
    ) -> CheckResult:
        if state is CheckState.PASSED or (state is None and healthy):
            self._passed.add(comp)
        return CheckResult(
            component=comp,
            healthy=healthy,
            reason=reason,
            details=dict(details or {}),
            duration_seconds=duration,
            timestamp=time.time(),
            required=required,
            run_state=state,
        )

    def _collected(self, comp: str, item: _Pending) -> CheckResult:
        call = item.call
        if not call.done.is_set():
            return self._result(
                comp,
                item.required,
                False,
                f"no answer within {call.timeout:g}s",
                duration=time.monotonic() - call.started,
            )
        duration = call.finished - call.started
        if call.error is not None:
            return self._result(comp, item.required, False, _describe(call.error), duration=duration)
        out = call.outcome
        if not isinstance(out, Outcome):
            what = f"check returned {type(out).__name__}, not an Outcome"
            return self._result(comp, item.required, False, what, duration=duration)
        healthy = bool(out.healthy) and out.state in (None, CheckState.PASSED)
        return self._result(
            comp, item.required, healthy, out.reason, out.details, duration=duration, state=out.state
        )
