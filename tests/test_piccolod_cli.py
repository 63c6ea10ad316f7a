"""The ``piccolod`` command line, run as a real process with real, local-only checks.

Policies point the storage check at the test's directory and the network check at a listener on
127.0.0.1 that the test opens; ``api`` probes the configured address, where a daemon runs or not.
"""

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
from typing import Any

import pytest
import yaml

from piccolod import __version__
from tests.agent_helpers import free_port, get, policy_data, wait_for, write_policy

PICCOLOD = [sys.executable, "-m", "piccolod"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PICCOLOD, *args], check=False, capture_output=True, text=True, timeout=60)


@pytest.fixture
def tcp_target() -> Iterator[str]:
    """A listening socket on 127.0.0.1 for the network check to connect to."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def local_policy(
    tmp_path: Path, target: str, required: list[str], optional: list[str], port: int | None = None
) -> Path:
    data: dict[str, Any] = policy_data(
        required, optional, listen=f"127.0.0.1:{port or free_port()}", interval=0.5
    )
    data["health_policy"]["checks"] = {
        "storage": {"mounts": [str(tmp_path)]},
        "network": {"targets": [target], "dns_names": ["localhost"]},
    }
    data["agent"]["state_dir"] = str(tmp_path / "state")
    return write_policy(tmp_path / "policy.yaml", data)


def test_version() -> None:
    r = run("--version")
    assert (r.returncode, r.stdout) == (0, f"piccolod {__version__}\n")


def test_no_command_prints_help_and_exits_3() -> None:
    r = run()
    assert r.returncode == 3
    assert "serve" in r.stderr
    assert "check" in r.stderr


def test_check_healthy_exits_0(tmp_path: Path, tcp_target: str) -> None:
    r = run("check", "--config", str(local_policy(tmp_path, tcp_target, ["storage"], ["network"])))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("status: healthy")
    assert "storage" in r.stdout
    assert "network" in r.stdout


def test_check_json_is_the_health_document(tmp_path: Path, tcp_target: str) -> None:
    config = local_policy(tmp_path, tcp_target, ["storage"], ["network"])
    r = run("check", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "healthy"
    assert doc["components"]["network"]["connectivity_test"] == "passed"
    assert doc["components"]["network"]["dns_resolution"] == "passed"
    assert isinstance(doc["components"]["storage"]["free_space_percent"], float)
    assert doc["components"]["tpm"]["status"] == "not_checked"
    assert doc["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_check_without_a_daemon_says_api_fails(tmp_path: Path, tcp_target: str) -> None:
    degraded = local_policy(tmp_path, tcp_target, ["storage"], ["network", "api"])
    r = run("check", "--config", str(degraded), "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "degraded"
    assert doc["components"]["api"]["status"] == "unhealthy"
    assert "connection refused" in doc["components"]["api"]["reason"]
    unhealthy = local_policy(tmp_path, tcp_target, ["storage", "api"], ["network"])
    r = run("check", "--config", str(unhealthy))
    assert r.returncode == 2, r.stdout
    assert r.stdout.startswith("status: unhealthy")


def test_check_against_a_running_daemon(tmp_path: Path, tcp_target: str) -> None:
    port = free_port()
    config = local_policy(tmp_path, tcp_target, ["storage", "api"], ["network"], port=port)
    daemon = subprocess.Popen(
        [*PICCOLOD, "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )
    try:
        wait_for(lambda: _answers(port), what="daemon API")
        r = run("check", "--config", str(config))
        assert r.returncode == 0, r.stdout + r.stderr
        code, _, body = get(port, "/api/v1/system/health")
        assert code == 200, body
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0


def _answers(port: int) -> bool:
    try:
        return get(port, "/livez", timeout=1)[0] == 200
    except OSError:
        return False


def test_serve_with_a_bad_explicit_policy_exits_1_not_the_gates_3(tmp_path: Path) -> None:
    """3 is the unit's RestartPreventExitStatus= (a failed gate); a bad --config is restartable."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  listen: nowhere\n")
    r = run("serve", "--config", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip().startswith(f"piccolod: {bad}:2: agent.listen: ")


def _notifications(sock: socket.socket) -> list[str]:
    sock.settimeout(0)
    out: list[str] = []
    while True:
        try:
            out.extend(sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return out


def test_serve_on_a_busy_port_runs_without_its_api_and_still_gets_ready(
    tmp_path: Path, tcp_target: str, flatcar_disk: Path
) -> None:
    """A marked slot must never be blocked: a busy listen address costs the API, not READY=1."""
    from tests.fixtures.gptdisk import USR_A, cmdline_for, usr_device

    port = int(tcp_target.rsplit(":", 1)[1])  # already listening
    config = local_policy(tmp_path, tcp_target, ["storage", "api"], [], port=port)
    data = yaml.safe_load(config.read_text())
    (tmp_path / "cmdline").write_text(cmdline_for(USR_A))  # marked
    data["agent"]["boot"] = {
        "cmdline": str(tmp_path / "cmdline"),
        "usr_device": usr_device(flatcar_disk, partuuid=USR_A),
    }
    config = write_policy(tmp_path / "policy.yaml", data)
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(str(tmp_path / "notify"))
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID")}
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    daemon = subprocess.Popen(
        [*PICCOLOD, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        seen: list[str] = []

        def ready() -> bool:
            seen.extend(_notifications(notify_sock))
            return "READY=1" in seen

        wait_for(ready, timeout=20, what="READY=1 from serve on a busy port")
        assert daemon.poll() is None, "serve exited"
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=10)
        assert daemon.returncode == 0, out
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        notify_sock.close()
    assert "Traceback" not in out
    assert f"cannot listen on 127.0.0.1:{port}" in out and "running without the HTTP API" in out


def _probes_of(pid: int) -> list[int]:
    """PIDs of the TPM probe processes that are children of ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                if b"tpm_probe" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    found.append(int(kid))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("phase", ["runtime loop (slot marked)", "first-boot gate (slot unknown)"])
def test_sigterm_with_a_hung_check_exits_within_2s(tmp_path: Path, flatcar_disk: Path, phase: str) -> None:
    """A TPM that accepts and never answers, a 60 s TPM deadline: SIGTERM still ends serve at once, 0."""
    from tests.fixtures.gptdisk import USR_A, cmdline_for, usr_device

    mute_path = tmp_path / "tpm"
    mute, mute_ctrl = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    notify_path = tmp_path / "notify"
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        for sock, name in ((mute, str(mute_path)), (mute_ctrl, f"{mute_path}.ctrl")):
            sock.bind(name)
            sock.listen(16)
        notify_sock.bind(str(notify_path))
        cmdline = tmp_path / "cmdline"
        cmdline.write_text(cmdline_for(USR_A) if phase.startswith("runtime") else "console=ttyS0\n")
        port = free_port()
        data = policy_data(["tpm", "storage"], [], listen=f"127.0.0.1:{port}", interval=0.5)
        data["health_policy"]["thresholds"]["tpm_operation_timeout_seconds"] = 60
        data["health_policy"]["checks"] = {
            "tpm": {"tcti": f"swtpm:path={mute_path}"},
            "storage": {"mounts": [str(tmp_path)]},
        }
        data["agent"].update(
            state_dir=str(tmp_path / "state"),
            boot={"cmdline": str(cmdline), "usr_device": usr_device(flatcar_disk, partuuid=USR_A)},
        )
        config = write_policy(tmp_path / "policy.yaml", data)
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = str(notify_path)
        daemon = subprocess.Popen(
            [*PICCOLOD, "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        pid = daemon.pid
        wait_for(lambda: _answers(port), what="daemon API")
        wait_for(lambda: bool(_probes_of(pid)), what="a TPM probe hanging on the mute socket")
        time.sleep(0.3)  # well inside the 60 s deadline: the check is hung, not finished
        probes = _probes_of(pid)
        assert probes
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(10)
        took = time.monotonic() - started
        assert took < 2.0, f"serve took {took:.2f}s to exit after SIGTERM"
        assert code == 0
        for probe in probes:  # killed and reaped, not orphaned
            assert not Path(f"/proc/{probe}").exists(), f"TPM probe {probe} outlived the agent"
        notify_sock.settimeout(0)
        messages = []
        while True:
            try:
                messages.append(notify_sock.recv(4096).decode())
            except BlockingIOError:
                break
        assert any("STOPPING=1" in m.split("\n") for m in messages), messages
        # Stopping is not a verdict: no rollback record, no reboot marker.
        assert not (tmp_path / "state" / "rollback.json").exists()
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        for sock in (mute, mute_ctrl, notify_sock):
            sock.close()
