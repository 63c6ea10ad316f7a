"""Log records: one JSON object per line when not on a terminal, readable text on a real terminal."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from piccolod import logs
from piccolod.policy import Component
from piccolod.result import CheckResult

RESULT = CheckResult(
    component=Component.STORAGE,
    healthy=False,
    reason="/var: 3% free",
    details={"free_space_percent": 3.0, "io_errors": 0},
    duration_seconds=0.0123,
    timestamp=1_800_000_000.5,
    required=True,
)


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    logger = logging.getLogger(logs.LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_json_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    logs.setup(out)
    logs.log_check(RESULT, "boot-1")
    logging.getLogger("piccolod").info("plain message")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["component"] == "storage"
    assert first["healthy"] is False
    assert first["details"] == {"free_space_percent": 3.0, "io_errors": 0}
    assert first["timestamp"] == "2027-01-15T08:00:00.500Z"
    assert first["boot_id"] == "boot-1"
    assert first["reason"] == "/var: 3% free"
    assert first["level"] == "warning"
    assert second["message"] == "plain message"


def test_text_on_a_terminal() -> None:
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            logs.setup(tty)
            logs.log_check(RESULT, "boot-1")
            tty.flush()
            text = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert not text.lstrip().startswith("{")
    assert "check storage FAILED: /var: 3% free (0.012s)" in text
    assert "free_space_percent=3.0" in text
