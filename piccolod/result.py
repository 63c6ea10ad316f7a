"""Results of health checks and assessments: the data the API, metrics, logs and the gate share."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from piccolod.policy import Component


class Status(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Outcome:
    """What one check function returns: verdict, a human reason and the details the API shows."""

    healthy: bool
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """One component's verdict inside an assessment, with its duration and wall-clock timestamp."""

    component: Component
    healthy: bool
    reason: str
    details: Mapping[str, Any]
    duration_seconds: float
    timestamp: float
    required: bool
