"""One assessment: every checked component of the policy, run concurrently, each under its own deadline.

Each check runs in its own daemon thread and gets ``timeout_for(component, policy)`` seconds (the check is
told its timeout and should honour it; the engine waits :data:`GRACE_SECONDS` longer so a check that does
honour it reports its own reason). A check that raises becomes that component's failure with the
exception as the reason; a check that overruns its deadline becomes a failure "no answer within Ns" and its
thread is abandoned, never joined. An :class:`Assessor` keeps at most one call in flight per component: if
the previous call of a component is still running when the next assessment starts, that component fails
with "still running from previous assessment" and no new thread is started, so hung checks cannot pile
up threads across runs.

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
from typing import cast

from piccolod.policy import AllOptionalFailed, Component, PolicyFile
from piccolod.result import CheckResult, Outcome, Status

Check = Callable[[PolicyFile, float], Outcome]
TimeoutFor = Callable[[Component, PolicyFile], float]

GRACE_SECONDS = 0.25
CANCEL_POLL_SECONDS = 0.05
STILL_RUNNING = "still running from previous assessment"


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

    def result(self, component: Component) -> CheckResult | None:
        return next((r for r in self.results if r.component is component), None)

    def failing(self) -> tuple[Component, ...]:
        return tuple(r.component for r in self.results if not r.healthy)


def verdict(
    results: Iterable[CheckResult], optional_all_failed: AllOptionalFailed = AllOptionalFailed.UNHEALTHY
) -> Status:
    """``unhealthy`` if a required component fails, or every optional one does (unless
    ``optional_all_failed`` is ``degraded``); ``degraded`` if some optional ones fail."""
    optional = failed = 0
    for r in results:
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


def default_table() -> tuple[Mapping[Component, Check], TimeoutFor]:
    """The real checks of ``piccolod.checks`` (imported on first use, so the CLI starts fast)."""
    mod = importlib.import_module("piccolod.checks")
    return cast(Mapping[Component, Check], mod.CHECKS), cast(TimeoutFor, mod.timeout_for)


class _Call:
    """One running check: its thread fills in ``outcome`` or ``error`` and sets ``done``."""

    __slots__ = ("done", "error", "finished", "outcome", "started")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.finished = 0.0

    def run(self, check: Check, policy: PolicyFile, timeout: float) -> None:
        try:
            self.outcome = check(policy, timeout)
        except BaseException as exc:  # any failure of a check is that component's failure
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self.done.set()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Assessor:
    """Runs assessments with a fixed check table; remembers calls that are still in flight."""

    def __init__(
        self,
        checks: Mapping[Component, Check] | None = None,
        timeout_for: TimeoutFor | None = None,
        *,
        grace: float = GRACE_SECONDS,
    ) -> None:
        if checks is None or timeout_for is None:
            real_checks, real_timeout_for = default_table()
            checks = real_checks if checks is None else checks
            timeout_for = real_timeout_for if timeout_for is None else timeout_for
        self.checks: Mapping[Component, Check] = checks
        self.timeout_for: TimeoutFor = timeout_for
        self.grace = grace
        self._inflight: dict[Component, _Call] = {}
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

    def in_flight(self) -> tuple[Component, ...]:
        """Components whose last call has not returned yet (hung or slow)."""
        with self._lock:
            return tuple(c for c, call in self._inflight.items() if not call.done.is_set())

    def assess(self, policy: PolicyFile, components: Iterable[Component] | None = None) -> Assessment:
        """Run the checks of ``components`` (default: what the policy checks) and return the verdict.

        Raises :class:`Cancelled` if :meth:`cancel` was called before or while it runs.
        """
        if self._cancelled.is_set():
            raise Cancelled
        hp = policy.health_policy
        wanted = tuple(hp.checked() if components is None else components)
        started_wall = time.time()
        started = time.monotonic()
        calls: dict[Component, tuple[_Call | None, float, str | None]] = {}
        for comp in wanted:
            calls[comp] = self._start(comp, policy)
        results = []
        for comp in wanted:
            call, timeout, refusal = calls[comp]
            results.append(
                self._collect(
                    comp,
                    call=call,
                    timeout=timeout,
                    refusal=refusal,
                    started=started,
                    required=hp.required(comp),
                )
            )
        rule = hp.startup.optional_all_failed
        return Assessment(
            status=verdict(results, rule),
            results=tuple(results),
            started=started_wall,
            duration_seconds=time.monotonic() - started,
            optional_all_failed=rule,
        )

    def _start(self, comp: Component, policy: PolicyFile) -> tuple[_Call | None, float, str | None]:
        check = self.checks.get(comp)
        if check is None:
            return None, 0.0, f"no check is implemented for component '{comp}'"
        try:
            timeout = float(self.timeout_for(comp, policy))
        except Exception as exc:  # a broken timeout table fails that component only
            return None, 0.0, f"no deadline: {_describe(exc)}"
        with self._lock:
            previous = self._inflight.get(comp)
            if previous is not None and not previous.done.is_set():
                running = time.monotonic() - previous.started
                return None, timeout, f"{STILL_RUNNING} (running for {running:.1f}s)"
            call = _Call()
            self._inflight[comp] = call
        thread = threading.Thread(
            target=call.run, args=(check, policy, timeout), name=f"check-{comp}", daemon=True
        )
        thread.start()
        return call, timeout, None

    def _wait(self, call: _Call, deadline: float) -> bool:
        """Wait until ``call`` is done (True) or ``deadline`` passes (False); raise if cancelled."""
        while True:
            left = deadline - time.monotonic()
            if call.done.wait(max(0.0, min(left, CANCEL_POLL_SECONDS))):
                return True
            if self._cancelled.is_set():
                raise Cancelled
            if left <= CANCEL_POLL_SECONDS:
                return call.done.is_set()

    def _collect(
        self,
        comp: Component,
        *,
        call: _Call | None,
        timeout: float,
        refusal: str | None,
        started: float,
        required: bool,
    ) -> CheckResult:
        def result(healthy: bool, reason: str, details: Mapping[str, object], duration: float) -> CheckResult:
            return CheckResult(
                component=comp,
                healthy=healthy,
                reason=reason,
                details=details,
                duration_seconds=duration,
                timestamp=time.time(),
                required=required,
            )

        if call is None:
            return result(False, refusal or "not run", {}, 0.0)
        deadline = started + timeout + self.grace
        if not self._wait(call, deadline):
            return result(False, f"no answer within {timeout:g}s", {}, time.monotonic() - call.started)
        duration = call.finished - call.started
        if call.error is not None:
            return result(False, _describe(call.error), {}, duration)
        out = call.outcome
        if not isinstance(out, Outcome):
            return result(False, f"check returned {type(out).__name__}, not an Outcome", {}, duration)
        return result(bool(out.healthy), out.reason, dict(out.details), duration)
