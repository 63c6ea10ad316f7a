"""Runtime hysteresis: a component counts as failed only after ``failure_threshold`` consecutive failures.

The runtime loop feeds every raw :class:`~piccolod.assess.Assessment` through :class:`Hysteresis`, which
returns the *effective* assessment the API, metrics and ``STATUS=`` report: a component that was healthy
and then failed fewer than ``failure_threshold`` times in a row still counts as healthy (its reason says
it is failing and how often), so one blip does not flip the machine's status. One success resets the
count. A component that has not been healthy yet gets no such credit: it fails at once, so a machine
that boots broken does not report healthy for its first intervals. The startup gate and
``piccolod check`` use raw assessments: there a failure is a failure.
"""

from __future__ import annotations

import dataclasses

from piccolod.assess import Assessment, verdict
from piccolod.policy import Component
from piccolod.result import CheckResult


class Hysteresis:
    """Counts consecutive failures per component across assessments."""

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError("failure threshold must be at least 1")
        self.threshold = threshold
        self.failures: dict[Component, int] = {}
        self._counts_healthy: dict[Component, bool] = {}

    def apply(self, raw: Assessment) -> Assessment:
        results = tuple(self._one(r) for r in raw.results)
        return dataclasses.replace(raw, status=verdict(results, raw.optional_all_failed), results=results)

    def _one(self, r: CheckResult) -> CheckResult:
        if r.healthy:
            self.failures[r.component] = 0
            self._counts_healthy[r.component] = True
            return r
        count = self.failures.get(r.component, 0) + 1
        self.failures[r.component] = count
        if count >= self.threshold or not self._counts_healthy.get(r.component, False):
            self._counts_healthy[r.component] = False
            return r
        reason = f"failing ({count} of {self.threshold} consecutive failures before it counts): {r.reason}"
        return dataclasses.replace(r, healthy=True, reason=reason)
