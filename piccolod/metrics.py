"""Prometheus metrics of one agent, in a registry of its own (tests create many agents).

Every labelled series is created at zero before the first event, so dashboards and alerts see a 0
rather than a missing series: a status gauge and a duration histogram per component the policy checks
(a component it does not check has no series, so a ``== 0`` alert never fires for it), counters of
assessments by status, of gate outcomes and of rollbacks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from piccolod import __version__
from piccolod.assess import Assessment
from piccolod.policy import Component
from piccolod.result import Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GateOutcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


class Metrics:
    def __init__(self, components: Iterable[Component] = tuple(Component)) -> None:
        """``components``: those the policy checks (``HealthPolicy.checked()``); default all."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.duration = Histogram(
            "piccolod_health_check_duration_seconds",
            "Duration of one health check",
            ["component"],
            buckets=BUCKETS,
            registry=r,
        )
        self.check_status = Gauge(
            "piccolod_health_check_status",
            "1 when the component counts as healthy, 0 when not (after failure_threshold)",
            ["component"],
            registry=r,
        )
        self.consecutive = Gauge(
            "piccolod_health_check_consecutive_failures",
            "Consecutive failed checks of the component",
            ["component"],
            registry=r,
        )
        self.status = Gauge(
            "piccolod_health_status",
            "1 for the machine's current status, 0 for the others",
            ["status"],
            registry=r,
        )
        self.assessments = Counter(
            "piccolod_assessments_total", "Assessments by resulting status", ["status"], registry=r
        )
        self.gate_outcomes = Counter(
            "piccolod_gate_outcomes_total", "First-boot gate verdicts", ["outcome"], registry=r
        )
        self.rollbacks = Counter(
            "piccolod_rollbacks_total", "Rollbacks to the previous slot that this agent found", registry=r
        )
        self.last_assessment = Gauge(
            "piccolod_last_assessment_timestamp_seconds",
            "Wall-clock time of the last assessment",
            registry=r,
        )
        info = Gauge("piccolod_build_info", "Agent version", ["version"], registry=r)
        info.labels(version=__version__).set(1)
        for comp in components:
            self.duration.labels(component=comp)
            self.check_status.labels(component=comp).set(0)
            self.consecutive.labels(component=comp).set(0)
        for st in Status:
            self.assessments.labels(status=st)
            self.status.labels(status=st).set(0)
        for outcome in GateOutcome:
            self.gate_outcomes.labels(outcome=outcome)

    def observe(self, effective: Assessment, failures: dict[Component, int] | None = None) -> None:
        """Record one (effective) assessment: durations, per-component status, the counter."""
        for res in effective.results:
            self.duration.labels(component=res.component).observe(res.duration_seconds)
            self.check_status.labels(component=res.component).set(1 if res.healthy else 0)
            if failures is not None:
                self.consecutive.labels(component=res.component).set(failures.get(res.component, 0))
            elif not res.healthy:
                self.consecutive.labels(component=res.component).inc()
            else:
                self.consecutive.labels(component=res.component).set(0)
        for st in Status:
            self.status.labels(status=st).set(1 if st is effective.status else 0)
        self.assessments.labels(status=effective.status).inc()
        self.last_assessment.set(effective.started + effective.duration_seconds)

    def gate_outcome(self, outcome: GateOutcome) -> None:
        self.gate_outcomes.labels(outcome=outcome).inc()

    def rollback(self) -> None:
        self.rollbacks.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
