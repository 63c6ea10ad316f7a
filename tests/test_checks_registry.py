"""The check registry: one check per component, their deadlines, and all six run at once in threads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from piccolod.checks import CHECKS, timeout_for
from piccolod.policy import (
    Agent,
    Checks,
    Component,
    DockerCheck,
    HealthPolicy,
    NetworkCheck,
    PolicyFile,
    StorageCheck,
    Thresholds,
    TpmCheck,
)
from piccolod.result import Outcome
from tests.fixtures.daemons import Dockerd, Swtpm


class Livez(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/livez" else 404)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def api_listen() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Livez)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield "127.0.0.1:{}".format(*server.server_address[1:2])
    finally:
        server.shutdown()
        server.server_close()


def make_policy(docker: str, tcti: str, mount: str, target: str, listen: str, timeout: float) -> PolicyFile:
    return PolicyFile(
        health_policy=HealthPolicy(
            thresholds=Thresholds(
                network_timeout_seconds=timeout,
                tpm_operation_timeout_seconds=timeout,
                min_disk_space_percent=0,
            ),
            checks=Checks(
                docker=DockerCheck(host=docker),
                tpm=TpmCheck(tcti=tcti),
                storage=StorageCheck(mounts=(mount,)),
                network=NetworkCheck(targets=(target,), dns_names=()),
            ),
        ),
        agent=Agent(listen=listen),
    )


def run_all(policy: PolicyFile) -> dict[Component, tuple[Outcome, float]]:
    def timed(component: Component) -> tuple[Outcome, float]:
        started = time.monotonic()
        outcome = CHECKS[component](policy, timeout_for(component, policy))
        return outcome, time.monotonic() - started

    with ThreadPoolExecutor(len(Component)) as pool:
        futures = {c: pool.submit(timed, c) for c in Component}
        return {c: f.result(30) for c, f in futures.items()}


def test_one_check_per_component() -> None:
    assert set(CHECKS) == set(Component)
    assert all(callable(check) for check in CHECKS.values())


def test_deadlines_come_from_the_policy() -> None:
    pol = PolicyFile(
        health_policy=HealthPolicy(
            thresholds=Thresholds(network_timeout_seconds=3, tpm_operation_timeout_seconds=9)
        )
    )
    assert {c: timeout_for(c, pol) for c in Component} == {
        Component.DOCKER: 3,
        Component.CONTAINERS: 3,
        Component.TPM: 9,
        Component.STORAGE: 3,
        Component.NETWORK: 3,
        Component.API: 3,
    }


@pytest.mark.slow
@pytest.mark.privileged
def test_all_six_pass_concurrently(dockerd: Dockerd, swtpm: Swtpm, api_listen: str, tmp_path: Path) -> None:
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(8)
        pol = make_policy(
            dockerd.host,
            swtpm.tcti,
            str(tmp_path),
            f"127.0.0.1:{target.getsockname()[1]}",
            api_listen,
            5.0,
        )
        results = run_all(pol)
    failed = {c: o.reason for c, (o, _) in results.items() if not o.healthy}
    assert failed == {}


def test_all_six_fail_fast_when_everything_is_gone(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        port = closed.getsockname()[1]
        pol = make_policy(
            f"unix://{tmp_path}/docker.sock",
            f"swtpm:path={tmp_path}/tpm.sock",
            str(tmp_path / "missing"),
            f"127.0.0.1:{port}",
            f"127.0.0.1:{port}",
            5.0,
        )
        started = time.monotonic()
        results = run_all(pol)
        took = time.monotonic() - started
    assert {c: o.healthy for c, (o, _) in results.items()} == dict.fromkeys(Component, False)
    assert all(o.reason for o, _ in results.values())
    assert took < 2.0, {c: round(t, 2) for c, (_, t) in results.items()}
