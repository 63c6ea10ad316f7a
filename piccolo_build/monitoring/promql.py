"""The bits of PromQL the monitoring files are written in: durations and label selectors.

Durations follow Prometheus' ``model.ParseDuration`` (prometheus/common): an integer and a unit, largest
first (``1h30m``, ``1s500ms``); units ``d``, ``h``, ``m``, ``s``, ``ms``. A label selector is what goes
between the braces of a vector selector: matchers ``name op "value"`` (``=``, ``!=``, ``=~``, ``!~``),
separated by commas (the Prometheus querying documentation's "Time series selectors").
"""

from __future__ import annotations

import re

UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\[^\n])*"\s*'
_SELECTOR = re.compile(f"{_MATCHER}(?:,{_MATCHER})*")


def milliseconds(seconds: float) -> int:
    """``seconds`` as whole milliseconds; ValueError when it is not a whole number of them."""
    ms = round(seconds * 1000)
    if ms < 0 or abs(ms - seconds * 1000) > 1e-6:
        raise ValueError(f"must be a whole number of milliseconds, not negative, got {seconds!r}")
    return ms


def duration(seconds: float) -> str:
    """``seconds`` as a Prometheus duration: ``600`` -> ``10m``, ``5400`` -> ``1h30m``, ``0`` -> ``0s``."""
    left = milliseconds(seconds)
    if left == 0:
        return "0s"
    parts = []
    for unit, size in UNITS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def selector(value: str) -> str:
    """A label selector (``job="piccolod"``, ``job="piccolod",env=~"prod|edge"``), checked; returned
    without surrounding blanks. ValueError names what is wrong."""
    if not _SELECTOR.fullmatch(value):
        raise ValueError(
            'must be label matchers such as job="piccolod" or job="piccolod", env=~"prod.*" '
            f"(name, one of = != =~ !~, a double-quoted value; comma-separated), got {value!r}"
        )
    return value.strip()


def series(name: str, sel: str, *more: str) -> str:
    """``name{sel, more...}``: a vector selector of ``name`` restricted by ``sel`` and further matchers."""
    return f"{name}{{{', '.join((sel, *more))}}}"
