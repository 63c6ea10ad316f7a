"""The network check against real sockets: listeners on 127.0.0.x, refused ports, black holes, and DNS.

TCP tests use loopback addresses only. DNS tests run in a network and mount namespace created for the
test (``unshare``, :mod:`tests.fixtures.dnsns`), where ``/etc/resolv.conf`` points at a small DNS
responder on that namespace's own 127.0.0.1:53, so no query ever leaves the machine (the host's
resolver is a private-range address).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piccolod.checks import CHECKS, timeout_for
from piccolod.checks.network import check_network
from piccolod.policy import Checks, Component, HealthPolicy, NetworkCheck, PolicyFile, Thresholds
from tests.fixtures.dnsns import in_netns


def policy(targets: list[str], names: list[str] | None = None, timeout: float = 2.0) -> PolicyFile:
    return PolicyFile(
        health_policy=HealthPolicy(
            thresholds=Thresholds(network_timeout_seconds=timeout),
            checks=Checks(network=NetworkCheck(targets=tuple(targets), dns_names=tuple(names or ()))),
        )
    )


def loopback() -> str:
    """A random 127.0.0.x address, so concurrent test runs rarely share one."""
    return f"127.0.0.{random.randint(2, 254)}"


@pytest.fixture
def listener() -> Iterator[str]:
    """``host:port`` of a socket that accepts connections (they queue; nothing is sent)."""
    with socket.socket() as sock:
        sock.bind((loopback(), 0))
        sock.listen(64)
        host, port = sock.getsockname()
        yield f"{host}:{port}"


@pytest.fixture
def refused() -> Iterator[str]:
    """``host:port`` that answers SYN with RST: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind((loopback(), 0))
        host, port = sock.getsockname()
        yield f"{host}:{port}"


@pytest.fixture
def black_hole() -> Iterator[str]:
    """``host:port`` whose accept queue is full: the kernel drops further SYNs, connects hang."""
    with socket.socket() as sock, socket.socket() as filler:
        sock.bind((loopback(), 0))
        sock.listen(0)
        filler.connect(sock.getsockname())
        host, port = sock.getsockname()
        with socket.socket() as probe:
            probe.settimeout(0.2)
            with pytest.raises(TimeoutError):
                probe.connect((host, port))
        yield f"{host}:{port}"


def test_reachable_targets_pass(listener: str) -> None:
    with socket.socket(socket.AF_INET6) as v6:
        v6.bind(("::1", 0))
        v6.listen(8)
        v6_target = f"[::1]:{v6.getsockname()[1]}"
        outcome = check_network(policy([listener, v6_target]), 2.0)
    assert outcome.healthy, outcome.reason
    assert outcome.details == {
        "connectivity_test": "passed",
        "dns_resolution": "skipped",
        "targets": {listener: "ok", v6_target: "ok"},
        "dns": {},
    }


def test_refused_target_fails_at_once(listener: str, refused: str) -> None:
    started = time.monotonic()
    outcome = check_network(policy([listener, refused], timeout=5.0), 5.0)
    assert time.monotonic() - started < 1.0
    assert not outcome.healthy
    assert outcome.details["connectivity_test"] == "failed"
    assert outcome.details["targets"] == {listener: "ok", refused: "connection refused"}
    assert outcome.reason == f"{refused}: connection refused"


def test_black_hole_fails_by_the_deadline(listener: str, black_hole: str) -> None:
    started = time.monotonic()
    outcome = check_network(policy([black_hole, listener], timeout=1.0), 1.0)
    took = time.monotonic() - started
    assert not outcome.healthy
    assert outcome.details["targets"][black_hole] == "timed out after 1s"
    assert outcome.details["targets"][listener] == "ok"
    assert 0.9 < took < 1.5, f"took {took:.2f}s with a 1s deadline"


def test_many_black_holes_still_one_deadline(black_hole: str) -> None:
    with socket.socket() as other, socket.socket() as filler:
        other.bind((loopback(), 0))
        other.listen(0)
        filler.connect(other.getsockname())
        second = "{}:{}".format(*other.getsockname())
        started = time.monotonic()
        outcome = check_network(policy([black_hole, second], timeout=1.0), 1.0)
        took = time.monotonic() - started
    assert not outcome.healthy
    assert took < 1.5, f"probes ran one after another ({took:.2f}s)"


def test_nothing_configured_is_skipped_and_healthy() -> None:
    outcome = check_network(policy([]), 1.0)
    assert outcome.healthy
    assert outcome.details["connectivity_test"] == "skipped"
    assert outcome.details["dns_resolution"] == "skipped"


def test_registry_entry(listener: str) -> None:
    pol = policy([listener], timeout=3.0)
    assert timeout_for(Component.NETWORK, pol) == 3.0
    assert CHECKS[Component.NETWORK](pol, 3.0).healthy


# --- DNS, inside a private network namespace -------------------------------------------------------


def netns_cases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs inside the namespace (:func:`tests.fixtures.dnsns.in_netns`): each case's outcome."""
    results = []
    for case in cases:
        started = time.monotonic()
        outcome = check_network(policy(case["targets"], case["names"], case["timeout"]), case["timeout"])
        took = time.monotonic() - started
        results.append(
            {"healthy": outcome.healthy, "reason": outcome.reason, "details": outcome.details, "took": took}
        )
    return results


def run_in_netns(tmp_path: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = in_netns(tmp_path, "tests.test_checks_network:netns_cases", cases)
    return results


def test_dns_resolution_in_a_private_namespace(tmp_path: Path) -> None:
    cases = [
        {"targets": [], "names": ["localhost", "piccolo.test", "update.piccolo.test"], "timeout": 3.0},
        {"targets": [], "names": ["piccolo.test", "nothing-here.invalid"], "timeout": 3.0},
        {"targets": [], "names": ["piccolo.test", "silent.test"], "timeout": 1.0},
        {"targets": ["nothing-here.invalid:443"], "names": [], "timeout": 3.0},
    ]
    resolves, unknown, silent, bad_target = run_in_netns(tmp_path, cases)

    assert resolves["healthy"], resolves["reason"]
    assert resolves["details"]["dns_resolution"] == "passed"
    assert resolves["details"]["dns"] == {
        "localhost": ["127.0.0.1", "::1"],
        "piccolo.test": ["127.0.0.9"],
        "update.piccolo.test": ["127.0.0.10"],
    }

    assert not unknown["healthy"]
    assert unknown["details"]["dns_resolution"] == "failed"
    assert unknown["details"]["dns"]["piccolo.test"] == ["127.0.0.9"]
    assert unknown["details"]["dns"]["nothing-here.invalid"].startswith("name resolution failed")
    assert unknown["took"] < 1.0

    assert not silent["healthy"]
    assert silent["details"]["dns"]["silent.test"] == "timed out after 1s"
    assert silent["took"] < 1.5, "a silent resolver held the check past its deadline"

    assert not bad_target["healthy"]
    assert bad_target["details"]["connectivity_test"] == "failed"
    assert bad_target["details"]["targets"]["nothing-here.invalid:443"].startswith("name resolution failed")
