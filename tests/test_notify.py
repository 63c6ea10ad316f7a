"""sd_notify: the datagrams the agent sends, read from a real AF_UNIX socket as systemd would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolod import notify
from tests.agent_helpers import free_port, get, policy_data, write_policy


class Listener:
    """A bound SOCK_DGRAM socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # what goes into NOTIFY_SOCKET
        self.seen: list[str] = []

    def receive(self, timeout: float = 5.0) -> list[str]:
        self.sock.settimeout(timeout)
        data, _, _, _ = self.sock.recvmsg(65536)
        lines = data.decode().split("\n")
        self.seen.extend(lines)
        return lines

    def until(self, line: str, timeout: float = 15.0) -> list[str]:
        """Collect datagrams until one contains ``line``; return everything seen so far."""
        deadline = time.monotonic() + timeout
        while line not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{line!r} never arrived; got {self.seen}")
            self.receive(left)
        return self.seen


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@piccolod-test-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind("\0" + name[1:])
    yield Listener(sock, name)
    sock.close()


def test_no_socket_is_a_no_op() -> None:
    assert notify.notify("READY=1", env={}) is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


def test_abstract_socket_gets_one_datagram(listener: Listener) -> None:
    assert notify.notify("READY=1", "STATUS=all\ngood", env={"NOTIFY_SOCKET": listener.name})
    assert listener.receive() == ["READY=1", "STATUS=all good"]


def test_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        assert notify.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": str(path)})
        assert sock.recv(100) == b"WATCHDOG=1"


def test_broken_sockets_never_raise(tmp_path: Path) -> None:
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": "/" + "x" * 200}) is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": "@\0bad"}) is False


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert notify.watchdog_seconds({}) is None
    assert notify.watchdog_seconds({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert notify.watchdog_seconds({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": me}) == 3.0
    assert notify.watchdog_seconds({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert notify.watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None


def test_serve_sends_ready_status_watchdog_and_stopping(listener: Listener, tmp_path: Path) -> None:
    """The real agent with its real checks (storage, api, and network against its own port)."""
    port = free_port()
    data = policy_data(["storage", "api"], ["network"], listen=f"127.0.0.1:{port}", interval=0.2)
    data["agent"]["state_dir"] = str(tmp_path / "state")
    data["health_policy"]["checks"] = {
        "storage": {"mounts": [str(tmp_path)]},
        "network": {"targets": [f"127.0.0.1:{port}"], "dns_names": ["localhost"]},
    }
    config = write_policy(tmp_path / "policy.yaml", data)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": listener.name,
        "WATCHDOG_USEC": "400000",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WATCHDOG_PID", None)
    out = (tmp_path / "stdout").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "piccolod", "serve", "--config", str(config)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        seen = listener.until("READY=1")
        ready_at = seen.index("READY=1")
        status = [line for line in seen if line.startswith("STATUS=")]
        assert status, seen
        assert "STATUS=healthy: 3/3 components pass" in status, seen
        code, _, body = get(port, "/api/v1/system/health")
        assert code == 200, body
        assert json.loads(body)["components"]["api"]["status"] == "healthy"
        # The watchdog is fed from the loop: several pings within a few intervals.
        before = seen.count("WATCHDOG=1")
        deadline = time.monotonic() + 3
        while listener.seen.count("WATCHDOG=1") < before + 3 and time.monotonic() < deadline:
            listener.receive(3)
        assert listener.seen.count("WATCHDOG=1") >= before + 3
        assert ready_at > 0  # status lines came before READY
        proc.send_signal(signal.SIGTERM)
        listener.until("STOPPING=1")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    log = (tmp_path / "stdout").read_text()
    records = [json.loads(line) for line in log.splitlines()]
    checks = [r for r in records if "component" in r]
    assert {r["component"] for r in checks} == {"storage", "api", "network"}
    for r in checks:
        assert {"component", "healthy", "details", "timestamp", "boot_id"} <= r.keys()
        assert r["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert records[-1]["message"] == "stopped"


def test_sigterm_during_a_long_interval_stops_at_once(listener: Listener, tmp_path: Path) -> None:
    port = free_port()
    data = policy_data(["api"], listen=f"127.0.0.1:{port}", interval=3600)
    data["agent"]["state_dir"] = str(tmp_path / "state")
    config = write_policy(tmp_path / "policy.yaml", data)
    env = {**os.environ, "NOTIFY_SOCKET": listener.name}
    proc = subprocess.Popen(
        [sys.executable, "-m", "piccolod", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listener.until("READY=1")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 2
        listener.until("STOPPING=1", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
