"""Logging for the agent: JSON lines for journald, readable text on a terminal.

:func:`setup` is called once at the entry point. :func:`log_check` writes one record per check with the
fields docs/agent.md names (component, healthy, details, timestamp, boot_id) plus state, reason and
duration; :func:`log_disabled` one naming the declared checks that do not run. With a
non-terminal stream every record is one JSON object per line, the extra fields at top level; on a
terminal it is one human line per record.

Nothing the agent prints carries raw control characters: text that may come from outside (a reason an
engine or a disk gave, a partition label, a file name) goes through :func:`printable`, so a newline
cannot split a line and an escape sequence cannot reach the terminal. JSON escapes them by itself.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from piccolod.baseline import Classified
from piccolod.policy import Declared
from piccolod.result import CheckResult, CheckState
from piccolod.text import printable

LOGGER = "piccolod"
FIELDS = "piccolod_fields"  # the LogRecord attribute that carries structured fields


def rfc3339(ts: float) -> str:
    """A wall-clock timestamp as RFC 3339 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, FIELDS, {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS, {})
        line = f"{rfc3339(record.created)} {record.levelname:<7} {record.getMessage()}"
        details = fields.get("details")
        if details:
            line += "  " + " ".join(f"{k}={v}" for k, v in details.items())
        line = printable(line, limit=None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(stream: TextIO | None = None, level: int = logging.INFO, *, json_lines: bool | None = None) -> None:
    """Route the ``piccolod`` logger to ``stream`` (stdout): JSON unless it is a terminal."""
    stream = sys.stdout if stream is None else stream
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    logger = logging.getLogger(LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def verdict_word(result: CheckResult) -> str:
    """``healthy``, ``FAILED``, or the state in capitals when it says more (``UNKNOWN``, ``CANCELLED``,
    ``REFUSED``; ``skipped``, which is no failure)."""
    if result.healthy:
        return "healthy"
    state = result.state
    if state is CheckState.FAILED:
        return "FAILED"
    return str(state) if not result.counted else str(state).upper()


def log_disabled(declared: Iterable[Declared], logger: logging.Logger | None = None) -> None:
    """One record, when the agent starts, naming every declared check that does not run and why (the
    field ``disabled``: name -> reason): a check switched off is never silent."""
    off = {d.name: d.disabled for d in declared if d.disabled is not None}
    if not off:
        return
    logger = logger or logging.getLogger(LOGGER)
    text = "; ".join(f"{name}: {why}" for name, why in off.items())
    logger.warning("checks disabled: %s", text, extra={FIELDS: {"disabled": off}})


def log_check(result: CheckResult, boot_id: str, logger: logging.Logger | None = None) -> None:
    """One structured record for one check."""
    logger = logger or logging.getLogger(LOGGER)
    fields = {
        "component": str(result.component),
        "healthy": result.healthy,
        "state": str(result.state),
        "reason": result.reason,
        "details": dict(result.details),
        "duration_seconds": round(result.duration_seconds, 6),
        "timestamp": rfc3339(result.timestamp),
        "boot_id": boot_id,
    }
    verdict = verdict_word(result)
    logger.log(
        logging.INFO if result.healthy or not result.counted else logging.WARNING,
        "check %s %s: %s (%.3fs)",
        result.component,
        verdict,
        result.reason,
        result.duration_seconds,
        extra={FIELDS: fields},
    )


def log_classified(
    classified: Iterable[Classified], boot_id: str, logger: logging.Logger | None = None
) -> None:
    """One record per failing required check of a gate's verdict: its class and why
    (:mod:`piccolod.baseline`), with ``component``, ``failure_class``, ``class_reason``, ``boot_id``."""
    logger = logger or logging.getLogger("piccolod.gate")
    for c in classified:
        fields = {
            "component": c.component,
            "failure_class": str(c.failure_class),
            "class_reason": c.reason,
            "boot_id": boot_id,
        }
        logger.warning("gate: %s is %s: %s", c.component, c.failure_class, c.reason, extra={FIELDS: fields})
