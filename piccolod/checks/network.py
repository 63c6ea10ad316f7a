"""The ``network`` check: TCP connects to each configured target, and DNS names resolve.

Targets are ``host:port`` (``checks.network.targets``); a target passes when a TCP connection is
established (nothing is sent). Names (``checks.network.dns_names``) pass when ``getaddrinfo`` returns
at least one address, through the system resolver exactly as other programs on the machine see it.
All probes run side by side and the check returns by its deadline (``network_timeout_seconds``)
whatever the network does: refused and unreachable targets fail at once, black holes and silent
resolvers fail when the deadline passes.

Details: ``connectivity_test`` and ``dns_resolution`` are ``passed`` or ``failed`` (``skipped`` when
nothing is configured); ``targets`` maps each target to ``ok`` or its reason, ``dns`` maps each name to
its sorted addresses or its reason.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from piccolod.checks.bounded import race, remaining
from piccolod.policy import PolicyFile, split_host_port
from piccolod.result import Outcome


def connect(target: str, deadline: float) -> str:
    host, port = split_host_port(target)
    with socket.create_connection((host, port), timeout=remaining(deadline)):
        return "ok"


def resolve(name: str) -> list[str]:
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def reason(exc: BaseException, timeout: float) -> str:
    """A short, stable reason for a failed probe."""
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def _verdict(results: dict[str, Any]) -> str:
    if not results:
        return "skipped"
    return "passed" if all(isinstance(v, list) or v == "ok" for v in results.values()) else "failed"


def check_network(policy: PolicyFile, timeout: float) -> Outcome:
    config = policy.health_policy.checks.network
    deadline = time.monotonic() + timeout
    jobs: dict[tuple[str, str], Callable[[], object]] = {}
    for target in config.targets:
        jobs["tcp", target] = partial(connect, target, deadline)
    for name in config.dns_names:
        jobs["dns", name] = partial(resolve, name)
    results = race(jobs, timeout)

    def shown(key: tuple[str, str]) -> Any:
        value = results[key]
        return reason(value, timeout) if isinstance(value, BaseException) else value

    targets = {target: shown(("tcp", target)) for target in config.targets}
    dns = {name: shown(("dns", name)) for name in config.dns_names}
    details = {
        "connectivity_test": _verdict(targets),
        "dns_resolution": _verdict(dns),
        "targets": targets,
        "dns": dns,
    }
    failed = [f"{t}: {r}" for t, r in targets.items() if r != "ok"]
    failed += [f"{n}: {r}" for n, r in dns.items() if not isinstance(r, list)]
    if failed:
        return Outcome(False, "; ".join(failed), details)
    return Outcome(True, f"{len(targets)} targets reachable, {len(dns)} names resolve", details)
