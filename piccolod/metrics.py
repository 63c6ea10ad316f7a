"""The agent's Prometheus metrics, kept and written out by the agent itself (text exposition format 0.0.4).

Every labelled series is created at zero before the first event, so dashboards and alerts see a 0
rather than a missing series: a status gauge and a duration histogram per component the policy checks
(a component it does not check has no series, so a ``== 0`` alert never fires for it), counters of
assessments by status and of gate outcomes. Every check the policy *declares*, run or not, has
``piccolod_check_enabled`` (1 or 0: a check switched off shows, never silently) and
``piccolod_check_state``, 1 for the state of its last run (passed, failed, unknown, refused, cancelled,
skipped) or for disabled or pending, 0 for the others. The exceptions are facts that are unknown until
they are read: the slot table's series (``piccolod_slot_*``) exist once the GPT was read, because a 0
would say "not marked good" about a slot nobody has looked at.

What a fleet needs besides (docs/monitoring.md): ``piccolod_os_info`` (version, update group, board and
booted slot as labels of one series), the slot table, whether the gate of this boot is pending and its
deadline, the rollbacks this machine came back from (``piccolod_rollbacks_total`` and
``piccolod_last_rollback_timestamp_seconds``, both from the journal, so they survive the reboots that a
rollback is made of and two rollbacks in a row read 1 then 2), whether an update is pinned, which known
checks the policy enables, and the assessment interval (so "assessments are stale" is judged per machine).
Names follow Prometheus' conventions: one ``piccolod_`` prefix, base units, ``_total`` on counters, and
labels of bounded cardinality only (values read from files are cut to 64 printable characters).

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
from piccolod.baseline import Classified, FailureClass
from piccolod.osinfo import UNKNOWN, OsInfo, label_text
from piccolod.policy import Component, Declared, Runtime
from piccolod.result import CheckState, Status
from piccolod.slot import BootSlot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


class GateOutcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    WARNED = "warned"  # opened with required checks that failed before the update too (on_pre_existing: warn)


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

    def only(self, value: float, *labels: str) -> None:
        """Make this the family's one series (an info metric whose labels changed)."""
        self.series = {self.key(labels): float(value)}

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


def _gauge(name: str, help: str, *labels: str) -> _Family:
    return _Family(name, "gauge", help, labels)


class Metrics:
    def __init__(
        self,
        components: Iterable[str] = tuple(Component),
        catalog: Iterable[Declared] = (),
        *,
        interval: float = Runtime().check_interval_seconds,
        known: Iterable[str] = tuple(Component),
    ) -> None:
        """``components``: those the policy checks (``HealthPolicy.checked()``), default all;
        ``catalog``: every check it declares (``HealthPolicy.catalog()``), which says which are enabled;
        without one, ``known`` are the checks this agent has (``piccolod_check_enabled`` is 0 for those
        not in ``components``); ``interval``: the policy's ``runtime.check_interval_seconds``."""
        self._lock = threading.Lock()
        self._rendered: bytes | None = None
        components = tuple(components)
        self.duration = _Histogram(
            "piccolod_health_check_duration_seconds", "Duration of one health check", ("component",), BUCKETS
        )
        self.check_status = _gauge(
            "piccolod_health_check_status",
            "1 when the component counts as healthy, 0 when not (after failure_threshold)",
            "component",
        )
        self.consecutive = _gauge(
            "piccolod_health_check_consecutive_failures",
            "Consecutive failed checks of the component",
            "component",
        )
        self.check_enabled = _gauge(
            "piccolod_check_enabled",
            "1 when the declared check runs, 0 when it is disabled (enabled: false, or named in neither "
            "startup list)",
            "component",
        )
        self.check_state = _gauge(
            "piccolod_check_state",
            "1 for the state of the check's last run (passed, failed, unknown, refused, cancelled, "
            "skipped) or disabled or pending, 0 for the others",
            "component",
            "state",
        )
        self.status = _gauge(
            "piccolod_health_status", "1 for the machine's current status, 0 for the others", "status"
        )
        self.assessments = _Family(
            "piccolod_assessments_total", "counter", "Assessments by resulting status", ("status",)
        )
        self.interval = _gauge(
            "piccolod_assessment_interval_seconds",
            "Seconds between two assessments (runtime.check_interval_seconds)",
        )
        self.gate_outcomes = _Family(
            "piccolod_gate_outcomes_total", "counter", "First-boot gate verdicts of this boot", ("outcome",)
        )
        self.gate_pending = _gauge(
            "piccolod_gate_pending", "1 while this boot's first-boot gate waits for its verdict"
        )
        self.gate_deadline = _gauge(
            "piccolod_gate_deadline_timestamp_seconds",
            "Deadline of this boot's first-boot gate (0: no gate ran here)",
        )
        self.failure_class = _gauge(
            "piccolod_gate_failure_class",
            "1 for the class of each required check failing in this boot's gate verdict (regression, "
            "pre_existing, inconclusive), 0 for the other classes and for the checks that passed",
            "component",
            "class",
        )
        self.rollbacks = _Family(
            "piccolod_rollbacks_total",
            "counter",
            "Rollbacks to the previous slot this machine came back from",
        )
        self.last_rollback = _gauge(
            "piccolod_last_rollback_timestamp_seconds",
            "When the gate that caused the last rollback failed (0: none)",
        )
        self.pinned = _gauge(
            "piccolod_update_pinned", "1 when the update-loop pin keeps a rolled-back version out"
        )
        self.last_assessment = _gauge(
            "piccolod_last_assessment_timestamp_seconds", "Wall-clock time of the last assessment"
        )
        self.os_info = _gauge(
            "piccolod_os_info",
            "The OS version, update group, board and booted /usr slot",
            "version",
            "group",
            "board",
            "slot",
        )
        self.slot_successful = _gauge(
            "piccolod_slot_successful", "The slot's GPT successful bit (1: marked good)", "slot"
        )
        self.slot_tries = _gauge("piccolod_slot_tries", "The slot's GPT tries counter", "slot")
        self.slot_priority = _gauge("piccolod_slot_priority", "The slot's GPT boot priority", "slot")
        info = _gauge("piccolod_build_info", "Agent version", "version")
        info.set(1, __version__)
        for comp in components:
            self.duration.create(comp)
            self.check_status.set(0, comp)
            self.consecutive.set(0, comp)
            for cls in FailureClass:
                self.failure_class.set(0, comp, cls)
        catalog = tuple(catalog)
        if catalog:
            for d in catalog:
                self.check_enabled.set(1 if d.enabled else 0, d.name)
                self._state(d.name, CheckState.PENDING if d.enabled else CheckState.DISABLED)
        else:
            known = tuple(known)
            for comp in (*known, *(c for c in components if c not in known)):
                self.check_enabled.set(1 if comp in components else 0, comp)
        for st in Status:
            self.assessments.set(0, st)
            self.status.set(0, st)
        for outcome in GateOutcome:
            self.gate_outcomes.set(0, outcome)
        for family in (
            self.gate_pending,
            self.gate_deadline,
            self.rollbacks,
            self.last_rollback,
            self.pinned,
        ):
            family.set(0)
        self.interval.set(interval)
        self.last_assessment.set(0)
        self.os_info.only(1, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        self._os = OsInfo()
        self._slot = UNKNOWN
        self._families: tuple[_Family, ...] = (
            self.duration,
            self.check_status,
            self.consecutive,
            self.check_enabled,
            self.check_state,
            self.status,
            self.assessments,
            self.interval,
            self.last_assessment,
            self.gate_outcomes,
            self.gate_pending,
            self.gate_deadline,
            self.failure_class,
            self.rollbacks,
            self.last_rollback,
            self.pinned,
            self.os_info,
            self.slot_successful,
            self.slot_tries,
            self.slot_priority,
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

    def gate_begins(self, deadline_at: float) -> None:
        """This boot's gate waits for its verdict until ``deadline_at`` (seconds since the epoch)."""
        with self._lock:
            self.gate_pending.set(1)
            self.gate_deadline.set(max(deadline_at, 0.0))
            self._rendered = None

    def gate_outcome(self, outcome: GateOutcome) -> None:
        """The gate's verdict: counted, and the gate no longer pending."""
        with self._lock:
            self.gate_outcomes.inc(outcome)
            self.gate_pending.set(0)
            self._rendered = None

    def gate_failures(self, classified: Iterable[Classified]) -> None:
        """The classes of the failing required checks of this boot's gate verdict."""
        with self._lock:
            for key in list(self.failure_class.series):
                self.failure_class.series[key] = 0
            for c in classified:
                self.failure_class.set(1, c.component, c.failure_class)
            self._rendered = None

    def rollback_tally(self, count: int, last_at: float) -> None:
        """The journal's rollback tally (clamped there); both survive reboots."""
        with self._lock:
            self.rollbacks.set(count)
            self.last_rollback.set(last_at)
            self._rendered = None

    def update_pinned(self, value: int) -> None:
        with self._lock:
            self.pinned.set(1 if value else 0)
            self._rendered = None

    def machine(self, os: OsInfo | None = None, slot: BootSlot | None = None) -> None:
        """The OS facts and the slot table (each left as it is when None). A slot table that could not
        be read leaves no ``piccolod_slot_*`` series, and the ``slot`` label says ``unknown``."""
        with self._lock:
            if os is not None:
                self._os = os
            if slot is not None:
                self._slot = label_text(slot.name or "")
                for family, attr in (
                    (self.slot_successful, "successful"),
                    (self.slot_tries, "tries"),
                    (self.slot_priority, "priority"),
                ):
                    family.series = {
                        family.key((label_text(r.name),)): float(getattr(r, attr)) for r in slot.rows
                    }
            self.os_info.only(1, self._os.version, self._os.group, self._os.board, self._slot)
            self._rendered = None

    def render(self) -> bytes:
        """The exposition text; the same bytes object until something changes."""
        with self._lock:
            if self._rendered is None:
                lines = [line for family in self._families for line in family.lines()]
                self._rendered = ("\n".join(lines) + "\n").encode("utf-8")
            return self._rendered
