"""Value checks of the policy: numbers the agent can use, text that travels safely, paths, addresses.

Each check returns the (possibly normalised) value or raises ``ValueError`` with the reason; the model
(:mod:`piccolod.model`) turns that into a ``file:line: key: message`` line. The builder uses the same
checks, so a value it bakes into an image is one the agent accepts.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from piccolod import http_client


def _finite(value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")


@dataclass(frozen=True)
class Between:
    """A check for a number the agent can use: finite and within ``[low, high]``.

    Every duration and count of the policy has such a range (docs/agent.md lists them): a value outside
    it would validate and then fail later, in a socket timeout, a thread wait or a unit file.
    """

    low: float
    high: float
    unit: str = ""

    def __call__(self, value: float) -> float:
        _finite(value)
        if not self.low <= value <= self.high:
            suffix = f" {self.unit}" if self.unit else ""
            raise ValueError(f"must be between {self.low:g} and {self.high:g}{suffix}, got {value:g}")
        return value


def between(low: float, high: float, unit: str = "") -> Between:
    return Between(low, high, unit)


def safe_text(value: str) -> str:
    """Reject text that cannot travel safely through a unit file, a shell or a log line."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters (newline, tab, ...)")
    return value


def absolute_path(value: str) -> str:
    safe_text(value)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"must not contain '..', got {value!r}")
    return value


def state_dir(value: str) -> str:
    """An absolute directory the agent may own: never the root directory itself."""
    absolute_path(value)
    if not value.strip("/"):
        raise ValueError(f"must be a directory of its own, not the root directory, got {value!r}")
    return value


def host_port(value: str) -> str:
    """``host:port`` or ``[v6]:port``; returns it unchanged. Used for targets and the listen address."""
    split_host_port(value)
    return value


def split_host_port(value: str) -> tuple[str, int]:
    safe_text(value)
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [address]:port, got {value!r}")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"expected host:port, got {value!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1-65535, got {port!r} in {value!r}")
    if any(c.isspace() for c in host) or host.startswith("-"):
        raise ValueError(f"bad host name {host!r}")
    return host, int(port)


def hostname(value: str) -> str:
    safe_text(value)
    if (
        not value
        or len(value) > 253
        or not all(part and len(part) <= 63 for part in value.rstrip(".").split("."))
    ):
        raise ValueError(f"not a valid DNS name: {value!r}")
    if not all(c.isalnum() or c in "-._" for c in value):
        raise ValueError(f"not a valid DNS name: {value!r}")
    return value


TCTI_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def tcti_string(value: str) -> str:
    """A TCTI in tpm2-tools form, ``name[:config]``: a module name such as ``device``, ``swtpm``, ``mssim``
    or ``tabrmd`` (or a library file name), and its configuration; ``device`` takes an absolute path."""
    safe_text(value)
    name, _, config = value.partition(":")
    if not TCTI_NAME.fullmatch(name):
        raise ValueError(
            f"must be a TCTI as name:config (device:/dev/tpmrm0, swtpm:path=/run/swtpm.sock), got {value!r}"
        )
    if name == "device" and config and not config.startswith("/"):
        raise ValueError(f"the device TCTI takes an absolute path (device:/dev/tpmrm0), got {value!r}")
    return value


def docker_endpoint(value: str | None) -> str | None:
    """``unix:///absolute/path`` or ``tcp://host:port`` (the endpoints the checks speak), or null."""
    if value is None:
        return None
    safe_text(value)
    http_client.endpoint(value)  # ValueError names what is wrong
    return value


def each(check: Callable[[Any], Any]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A check of every item of a list."""

    def run(values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(check(v) for v in values)

    return run


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``check`` for a value that may be null (null passes unchecked)."""

    def run(value: Any) -> Any:
        return None if value is None else check(value)

    return run


def distinct(empty: str) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A check of a list that must name something (``empty`` says what, when it does not) and must not
    name anything twice."""

    def run(values: tuple[Any, ...]) -> tuple[Any, ...]:
        if not values:
            raise ValueError(empty)
        for i, value in enumerate(values):
            if value in values[:i]:
                raise ValueError(f"'{value}' is listed twice")
        return values

    return run


def argv(values: tuple[str, ...]) -> tuple[str, ...]:
    """A command as an argument list: not empty, no control characters."""
    if not values:
        raise ValueError("must name a command")
    return tuple(safe_text(v) for v in values)
