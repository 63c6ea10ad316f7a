"""The agent's Prometheus metrics, kept and written out by the agent itself (text exposition format 0.0.4).

Every labelled series is created at zero before the first event, so dashboards and alerts see a 0
rather than a missing series: a status gauge and a duration histogram per component the policy checks
(a component it does not check has no series, so a ``== 0`` alert never fires for it), counters of
assessments by status, of gate outcomes and of rollbacks. Every check the policy *declares*, run or
not, has ``piccolod_check_enabled`` (1 or 0: a check switched off shows, never silently) and
``piccolod_check_state``, 1 for the state of its last run (passed, failed, unknown, refused, cancelled,
skipped) or for disabled or pending, 0 for the others.

The writer is ours (a few dozen lines instead of a client library that costs the agent several MiB):
``# HELP`` and ``# TYPE`` per family, label values escaped (``\\``, ``"``, newline) and help texts
escaped (``\\``, newline) as the format requires, numbers as Prometheus reads them (``+Inf``, ``NaN``).
The text is rendered once per change and served as the same bytes until the next one, so a scrape
costs a lookup, not a rendering. Updates and rendering take one lock: the runtime loop writes, the API
thread reads.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Iterable

from piccolod import __version__
from piccolod.assess import Assessment
from piccolod.policy import Component, Declared
from piccolod.result import CheckState, Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


class GateOutcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


def number(value: float) -> str:
    """A sample value as the text format writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{label_value(v)}"' for k, v in labels) + "}"


class _Family:
    """One metric family: a name, a type, a help text and its series (labels -> value)."""

    def __init__(self, name: str, kind: str, help: str, label_names: tuple[str, ...] = ()) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.label_names = label_names
        self.series: dict[Labels, float] = {}

    def key(self, values: tuple[str, ...]) -> Labels:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
        return tuple(zip(self.label_names, (str(v) for v in values), strict=True))

    def set(self, value: float, *labels: str) -> None:
        self.series[self.key(labels)] = float(value)

    def inc(self, *labels: str, by: float = 1.0) -> None:
        key = self.key(labels)
        self.series[key] = self.series.get(key, 0.0) + by

    def head(self) -> list[str]:
        return [f"# HELP {self.name} {help_text(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        return self.head() + [f"{self.name}{_labels(k)} {number(v)}" for k, v in self.series.items()]


class _Histogram(_Family):
    """Cumulative buckets, ``_count`` and ``_sum`` per label set."""

    def __init__(
        self, name: str, help: str, label_names: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        super().__init__(name, "histogram", help, label_names)
        self.buckets = buckets
        self.counts: dict[Labels, list[int]] = {}  # per bucket (not cumulative), then +Inf
        self.sums: dict[Labels, float] = {}

    def create(self, *labels: str) -> None:
        key = self.key(labels)
        self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        self.sums.setdefault(key, 0.0)

    def observe(self, value: float, *labels: str) -> None:
        self.create(*labels)
        key = self.key(labels)
        i = next((n for n, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[key][i] += 1
        self.sums[key] += value

    def lines(self) -> list[str]:
        out = self.head()
        for key, counts in self.counts.items():
            total = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                total += n
                out.append(f"{self.name}_bucket{_labels((*key, ('le', number(bound))))} {number(total)}")
            out.append(f"{self.name}_count{_labels(key)} {number(total)}")
            out.append(f"{self.name}_sum{_labels(key)} {number(self.sums[key])}")
        return out


class Metrics:
    def __init__(
        self, components: Iterable[str] = tuple(Component), catalog: Iterable[Declared] = ()
    ) -> None:
        """``components``: those the policy checks (``HealthPolicy.checked()``); default all.
        ``catalog``: every check it declares (``HealthPolicy.catalog()``)."""
        self._lock = threading.Lock()
        self._rendered: bytes | None = None
        self.duration = _Histogram(
            "piccolod_health_check_duration_seconds", "Duration of one health check", ("component",), BUCKETS
        )
        self.check_status = _Family(
            "piccolod_health_check_status",
            "gauge",
            "1 when the component counts as healthy, 0 when not (after failure_threshold)",
            ("component",),
        )
        self.consecutive = _Family(
            "piccolod_health_check_consecutive_failures",
            "gauge",
            "Consecutive failed checks of the component",
            ("component",),
        )
        self.status = _Family(
            "piccolod_health_status",
            "gauge",
            "1 for the machine's current status, 0 for the others",
            ("status",),
        )
        self.assessments = _Family(
            "piccolod_assessments_total", "counter", "Assessments by resulting status", ("status",)
        )
        self.gate_outcomes = _Family(
            "piccolod_gate_outcomes_total", "counter", "First-boot gate verdicts", ("outcome",)
        )
        self.rollbacks = _Family(
            "piccolod_rollbacks_total", "counter", "Rollbacks to the previous slot that this agent found"
        )
        self.last_assessment = _Family(
            "piccolod_last_assessment_timestamp_seconds", "gauge", "Wall-clock time of the last assessment"
        )
        self.check_enabled = _Family(
            "piccolod_check_enabled",
            "gauge",
            "1 when the declared check runs, 0 when it is disabled (enabled: false, or named in neither "
            "startup list)",
            ("component",),
        )
        self.check_state = _Family(
            "piccolod_check_state",
            "gauge",
            "1 for the state of the check's last run (passed, failed, unknown, refused, cancelled, "
            "skipped) or disabled or pending, 0 for the others",
            ("component", "state"),
        )
        for d in catalog:
            self.check_enabled.set(1 if d.enabled else 0, d.name)
            self._state(d.name, CheckState.PENDING if d.enabled else CheckState.DISABLED)
        info = _Family("piccolod_build_info", "gauge", "Agent version", ("version",))
        info.set(1, __version__)
        for comp in components:
            self.duration.create(comp)
            self.check_status.set(0, comp)
            self.consecutive.set(0, comp)
        for st in Status:
            self.assessments.set(0, st)
            self.status.set(0, st)
        for outcome in GateOutcome:
            self.gate_outcomes.set(0, outcome)
        self.rollbacks.set(0)
        self.last_assessment.set(0)
        self._families: tuple[_Family, ...] = (
            self.duration,
            self.check_status,
            self.consecutive,
            self.status,
            self.assessments,
            self.gate_outcomes,
            self.rollbacks,
            self.last_assessment,
            self.check_enabled,
            self.check_state,
            info,
        )

    def _state(self, name: str, state: CheckState) -> None:
        for one in CheckState:
            self.check_state.set(1 if one is state else 0, name, one)

    def observe(
        self,
        effective: Assessment,
        failures: dict[str, int] | None = None,
        fresh: Iterable[str] | None = None,
    ) -> None:
        """Record one (effective) assessment: durations of the checks that ran (``fresh``; None: all),
        per-component status and state, the counter."""
        ran = None if fresh is None else set(fresh)
        with self._lock:
            for res in effective.results:
                comp = res.component
                self._state(comp, res.state)
                if ran is not None and comp not in ran:
                    continue
                if not res.counted:
                    continue
                self.duration.observe(res.duration_seconds, comp)
                self.check_status.set(1 if res.healthy else 0, comp)
                if failures is not None:
                    self.consecutive.set(failures.get(comp, 0), comp)
                elif not res.healthy:
                    self.consecutive.inc(comp)
                else:
                    self.consecutive.set(0, comp)
            for st in Status:
                self.status.set(1 if st is effective.status else 0, st)
            self.assessments.inc(effective.status)
            self.last_assessment.set(effective.started + effective.duration_seconds)
            self._rendered = None

    def gate_outcome(self, outcome: GateOutcome) -> None:
        with self._lock:
            self.gate_outcomes.inc(outcome)
            self._rendered = None

    def rollback(self) -> None:
        with self._lock:
            self.rollbacks.inc()
            self._rendered = None

    def render(self) -> bytes:
        """The exposition text; the same bytes object until something changes."""
        with self._lock:
            if self._rendered is None:
                lines = [line for family in self._families for line in family.lines()]
                self._rendered = ("\n".join(lines) + "\n").encode("utf-8")
            return self._rendered
