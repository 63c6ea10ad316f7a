"""Helpers shared by the agent's tests: policies from dicts, an in-process daemon on a free port.

The in-process daemon is the real :class:`~piccolod.daemon.Daemon` (real HTTP server on 127.0.0.1, real
loop, real metrics) given a check table of small local functions, so the API and metrics tests control
what the checks say. Tests of the real checks drive ``piccolod serve`` as a subprocess instead.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from piccolod.api import listen_socket
from piccolod.assess import Assessor, Table
from piccolod.daemon import Daemon, GateHook, ready_after_first_assessment
from piccolod.document import Facts
from piccolod.model import Source, build
from piccolod.policy import PolicyFile
from piccolod.result import Outcome
from tests.fixtures.gptdisk import usr_device

# A test's storage check measures a directory on the host's disk, whose free space is the host's
# business: CI machines have run with under 5% free, below the policy's default floor of 10%. Every
# test policy that is not about free space sets this floor, so only the path and the I/O error counts
# can fail it. The tests of the floor itself (test_checks_storage) set theirs from what they measure.
FREE_SPACE_FLOOR = 0


def policy_data(
    required: list[str],
    optional: list[str] | None = None,
    *,
    listen: str = "127.0.0.1:8080",
    interval: float = 60.0,
    threshold: int = 1,
) -> dict[str, Any]:
    return {
        "health_policy": {
            "startup": {"required_components": required, "optional_components": optional or []},
            "runtime": {"check_interval_seconds": interval, "failure_threshold": threshold},
            "thresholds": {"min_disk_space_percent": FREE_SPACE_FLOOR},
        },
        "agent": {"listen": listen},
    }


def gate_agent(tmp_path: Path, port: int, disk: Path) -> dict[str, Any]:
    """The ``agent`` block of an in-process gate on the image ``disk``: its state, command line, /usr."""
    return {
        "listen": f"127.0.0.1:{port}",
        "state_dir": str(tmp_path / "state"),
        "boot": {"cmdline": str(tmp_path / "cmdline"), "usr_device": usr_device(disk, tmp_path / "cmdline")},
    }


def make_policy(data: Mapping[str, Any]) -> PolicyFile:
    return build(PolicyFile, dict(data), Source("<test>"))


def write_policy(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Switch:
    """A check whose verdict the test flips; counts its calls."""

    def __init__(self, healthy: bool = True, details: Mapping[str, Any] | None = None) -> None:
        self.healthy = healthy
        self.details = dict(details or {})
        self.calls = 0

    def __call__(self, policy: PolicyFile, timeout: float) -> Outcome:
        self.calls += 1
        return Outcome(self.healthy, "up" if self.healthy else "down", self.details)


FACTS = Facts(boot_id="00000000-test-boot-id", disk_encryption="none", pid=1, started_monotonic=0.0)


@contextmanager
def running_daemon(
    checks: Table,
    data: Mapping[str, Any],
    *,
    gate: GateHook = ready_after_first_assessment,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Daemon, int]]:
    """A real Daemon in a thread on a free 127.0.0.1 port; yields it and its port after READY."""
    listener = listen_socket("127.0.0.1:0")
    port = listener.getsockname()[1]
    pol = make_policy({**data, "agent": {"listen": f"127.0.0.1:{port}"}})
    daemon = Daemon(
        pol,
        assessor=Assessor(checks, lambda c, p: 2.0),
        gate=gate,
        listener=listener,
        facts=FACTS,
        env=env or {},
    )
    thread = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    thread.start()
    try:
        if gate is ready_after_first_assessment:
            assert daemon.is_ready.wait(10), "daemon never ready"
        else:
            wait_for(lambda: daemon.server is not None, what="API server started")
        yield daemon, port
    finally:
        daemon.stop()
        thread.join(10)
        assert not thread.is_alive(), "daemon did not stop"


def get(
    port: int, path: str, *, method: str = "GET", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
