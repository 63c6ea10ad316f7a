"""Runtime hysteresis: a check counts as failed only after its ``failure_threshold`` consecutive failures.

The runtime loop feeds every raw :class:`~piccolod.assess.Assessment` through :class:`Hysteresis`, which
returns the *effective* assessment the API, metrics and ``STATUS=`` report: a check that was healthy
and then failed fewer than ``failure_threshold`` times in a row still counts as healthy (its reason says
it is failing and how often), so one blip does not flip the machine's status. A check that counts as
failed counts as healthy again after ``success_threshold`` consecutive passes (1 by default: one success
resets the count). A check that has not been healthy yet gets no such credit: it fails at once, so a
machine that boots broken does not report healthy for its first intervals, unless the check is still
in its ``start_period_seconds`` (counted from the agent's start), when its failures are not held
against the machine yet. The startup gate and ``piccolod check`` use raw assessments: there a failure
is a failure.

Each check has its own thresholds (:class:`Rule`, from its options); an assessment that ran only some
checks (their intervals differ) updates only those: the others keep their effective result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from piccolod.assess import Assessment, verdict
from piccolod.result import CheckResult


@dataclass(frozen=True)
class Rule:
    """One check's thresholds."""

    failure_threshold: int
    success_threshold: int = 1
    start_period_seconds: float = 0.0


class Hysteresis:
    """Counts consecutive failures and passes per check across assessments."""

    def __init__(
        self,
        threshold: int,
        *,
        rules: Callable[[str], Rule] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``threshold``: every check's failure threshold, unless ``rules`` gives a check its own."""
        if threshold < 1:
            raise ValueError("failure threshold must be at least 1")
        self.threshold = threshold
        self._rules = rules if rules is not None else (lambda name: Rule(threshold))
        self._clock = clock
        self.started = clock()
        self.failures: dict[str, int] = {}
        self.passes: dict[str, int] = {}
        self._counts_healthy: dict[str, bool] = {}
        self._effective: dict[str, CheckResult] = {}

    def apply(self, raw: Assessment, fresh: Collection[str] | None = None) -> Assessment:
        """The effective assessment; ``fresh`` names the checks that ran now (None: all of them), the
        others keep the effective result they had."""
        results = tuple(
            self._one(r) if fresh is None or r.component in fresh else self._effective.get(r.component, r)
            for r in raw.results
        )
        return dataclasses.replace(raw, status=verdict(results, raw.optional_all_failed), results=results)

    def _one(self, r: CheckResult) -> CheckResult:
        out = self._judge(r) if r.counted else r
        self._effective[r.component] = out
        return out

    def _judge(self, r: CheckResult) -> CheckResult:
        name = r.component
        rule = self._rules(name)
        if r.healthy:
            self.failures[name] = 0
            self.passes[name] = self.passes.get(name, 0) + 1
            if self._counts_healthy.get(name, True) or self.passes[name] >= rule.success_threshold:
                self._counts_healthy[name] = True
                return r
            reason = (
                f"recovering ({self.passes[name]} of {rule.success_threshold} consecutive passes before "
                f"it counts): {r.reason}"
            )
            return dataclasses.replace(r, healthy=False, reason=reason, run_state=r.state)
        self.passes[name] = 0
        count = self.failures.get(name, 0) + 1
        self.failures[name] = count
        seen_healthy = self._counts_healthy.get(name)
        if seen_healthy is None:
            left = rule.start_period_seconds - (self._clock() - self.started)
            if left > 0:  # never healthy yet, and still starting: not held against it
                reason = f"starting ({left:.0f}s of its start period left): {r.reason}"
                return dataclasses.replace(r, healthy=True, reason=reason, run_state=r.state)
        if count >= rule.failure_threshold or not seen_healthy:
            self._counts_healthy[name] = False
            return r
        reason = (
            f"failing ({count} of {rule.failure_threshold} consecutive failures before it counts): {r.reason}"
        )
        return dataclasses.replace(r, healthy=True, reason=reason, run_state=r.state)
