"""The agent's shared in-memory state: what the runtime loop and the gate know, what the API serves.

Writers (the runtime loop, the gate) call :meth:`State.update`; every change re-renders the health
document once, and the API reads the resulting ``(http_status, body)`` pair with one attribute access,
so requests never take a lock, never build JSON and never run a check.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from piccolod import document
from piccolod.assess import Assessment
from piccolod.policy import Declared

STARTUP_VALUES = ("pending", "passed", "failed", "skipped")
# Keys the gate and the update watcher add to the health document (null until they say something):
# the classes of this boot's gate failures, the update-loop pin, what update_engine said last.
EXTRA_KEYS = ("gate_failures", "update_pin", "update_engine")


class State:
    def __init__(
        self,
        facts: document.Facts,
        checked: tuple[str, ...],
        policy_error: str | None = None,
        catalog: tuple[Declared, ...] = (),
    ) -> None:
        self.facts = facts
        self.policy_error = policy_error  # why the configured policy was not used (a fallback runs)
        self.checked = checked
        self.catalog = catalog
        self._lock = threading.Lock()
        self.assessment: Assessment | None = None  # effective (after hysteresis)
        self.raw: Assessment | None = None  # as the checks answered
        self.startup_health_check = "pending"
        self.update_status = "up_to_date"
        self.rollback_reason: str | None = None
        self.rollback_record: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {key: None for key in EXTRA_KEYS}
        self.document: dict[str, Any] = {}
        self.health: tuple[int, bytes] = (503, b"")
        self._render()

    def update(
        self,
        *,
        assessment: Assessment | None = None,
        raw: Assessment | None = None,
        startup_health_check: str | None = None,
        update_status: str | None = None,
        rollback_reason: str | None = None,
        rollback_record: dict[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Change what is given and re-render the document (None leaves a field as it is)."""
        if startup_health_check is not None and startup_health_check not in STARTUP_VALUES:
            raise ValueError(f"startup_health_check must be one of {STARTUP_VALUES}")
        with self._lock:
            if assessment is not None:
                self.assessment = assessment
            if raw is not None:
                self.raw = raw
            if startup_health_check is not None:
                self.startup_health_check = startup_health_check
            if update_status is not None:
                self.update_status = update_status
            if rollback_reason is not None:
                self.rollback_reason = rollback_reason
            if rollback_record is not None:
                self.rollback_record = rollback_record
            for key, value in (extra or {}).items():
                if key not in EXTRA_KEYS:
                    raise ValueError(f"not a key of the health document: {key}")
                self.extra[key] = value
            self._render()

    def _render(self) -> None:
        doc = document.build(
            self.assessment,
            self.facts,
            startup_health_check=self.startup_health_check,
            update_status=self.update_status,
            rollback_reason=self.rollback_reason,
            checked=self.checked,
            policy_error=self.policy_error,
            catalog=self.catalog,
        )
        doc.update(self.extra)
        self.document = doc
        self.health = (document.http_status(doc), document.encode(doc))
