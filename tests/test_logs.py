"""Log records: one JSON object per line when not on a terminal, readable text on a real terminal."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from piccolod import logs, text
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


# --- nothing the agent prints carries raw control characters ---------------------------------------

HOSTILE = "engine said: line one\nline two \x1b[2J\x1b]0;owned\x07 \x9b31m done\t\r"


def test_printable_escapes_every_control_character() -> None:
    assert text.printable("a\nb\x1b[31mc\td\x9be\x7ff\x00") == "a\\nb\\x1b[31mc\\td\\x9be\\x7ff\\x00"
    assert text.printable("plain text, é and → stay") == "plain text, é and → stay"
    out = text.printable("".join(map(chr, range(0x100))))
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out)


def test_a_text_log_line_cannot_be_split_or_colour_the_terminal() -> None:
    out = io.StringIO()
    logs.setup(out, json_lines=False)
    bad = CheckResult(Component.DOCKER, False, HOSTILE, {"name\nx": "\x1b[1m"}, 0.1, 1_800_000_000.0, False)
    logs.log_check(bad, "boot")
    text = out.getvalue()
    assert text.count("\n") == 1 and "\x1b" not in text and "\x9b" not in text and "\r" not in text
    assert "engine said: line one\\nline two \\x1b[2J" in text


def test_check_output_escapes_reasons() -> None:
    from piccolod.assess import Assessment
    from piccolod.commands.check import render_text
    from piccolod.result import Status

    bad = CheckResult(Component.DOCKER, False, HOSTILE, {}, 0.1, 1_800_000_000.0, False)
    text = render_text(Assessment(Status.DEGRADED, (bad,), 1_800_000_000.0, 0.1))
    assert len(text.splitlines()) == 2 and "\x1b" not in text and "\\x1b[2J" in text
