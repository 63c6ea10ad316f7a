"""Results of health checks and assessments: the data the API, metrics, logs and the gate share."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class CheckState(enum.StrEnum):
    """What became of one check, in the record, the API, the logs and the metrics.

    The first five are what a run gives: ``passed``, ``failed``, ``unknown`` (it ran and could not tell:
    an ``exec`` check's exit 2, a unit still activating, a container still starting), ``refused`` (it
    cannot run here: a program that is not executable) and ``cancelled`` (the gate stopped waiting for it
    because a required check had already failed). The others are checks that did not run: ``skipped``
    (``run_on`` leaves out this phase), ``disabled`` (declared and not named in the startup lists, or
    ``enabled: false``) and ``pending`` (not run yet).
    """

    PASSED = "passed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    REFUSED = "refused"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    DISABLED = "disabled"
    PENDING = "pending"


@dataclass(frozen=True)
class Outcome:
    """What one check function returns: verdict, a human reason and the details the API shows.

    ``state`` says more than ``healthy`` when it must: ``unknown`` or ``refused`` (None: ``passed`` or
    ``failed``, as ``healthy`` says)."""

    healthy: bool
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)
    state: CheckState | None = None


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict inside an assessment, with its duration and wall-clock timestamp.

    ``healthy`` is whether it counts as healthy (at runtime, after the check's thresholds); ``state`` is
    what its last run said. ``run_state`` is set when that differs from what ``healthy`` alone says.
    """

    component: str
    healthy: bool
    reason: str
    details: Mapping[str, Any]
    duration_seconds: float
    timestamp: float
    required: bool
    run_state: CheckState | None = None

    @property
    def state(self) -> CheckState:
        if self.run_state is not None:
            return self.run_state
        return CheckState.PASSED if self.healthy else CheckState.FAILED

    @property
    def counted(self) -> bool:
        """Whether the verdict counts it (a check skipped in this phase does not)."""
        return self.state is not CheckState.SKIPPED
