"""The docker and containers checks against a real, private dockerd with real HEALTHCHECKs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from piccolod.checks import CHECKS, timeout_for
from piccolod.checks import docker as docker_checks
from piccolod.checks.docker import check_containers, check_docker, started_at
from piccolod.policy import Checks, Component, DockerCheck, HealthPolicy, PolicyFile, Thresholds
from tests.fixtures.daemons import BUSYBOX_IMAGE, Dockerd

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

SECOND_NS = 1_000_000_000


def policy(host: str | None, startup_seconds: float = 60.0, timeout: float = 5.0) -> PolicyFile:
    return PolicyFile(
        health_policy=HealthPolicy(
            thresholds=Thresholds(container_startup_seconds=startup_seconds, network_timeout_seconds=timeout),
            checks=Checks(docker=DockerCheck(host=host)),
        )
    )


Run = Callable[..., Any]


@pytest.fixture
def run(dockerd: Dockerd) -> Iterator[Run]:
    """Start busybox containers on the session daemon; remove them afterwards."""
    client = dockerd.client()
    made: list[Any] = []

    def start(health: list[str] | None, interval_s: float = 1.0, cmd: str = "exec sleep 3600") -> Any:
        kwargs: dict[str, Any] = {}
        if health is not None:
            kwargs["healthcheck"] = {
                "test": ["CMD", *health],
                "interval": int(interval_s * SECOND_NS),
                "timeout": 2 * SECOND_NS,
                "retries": 1,
            }
        container = client.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", cmd],
            name=f"pt-{uuid.uuid4().hex[:10]}",
            detach=True,
            network_mode="none",
            **kwargs,
        )
        made.append(container)
        return container

    try:
        yield start
    finally:
        for container in made:
            container.remove(force=True)
        client.close()


def health_of(container: Any) -> str | None:
    container.reload()
    status: str | None = (container.attrs["State"].get("Health") or {}).get("Status")
    return status


def wait_health(container: Any, wanted: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while (status := health_of(container)) != wanted:
        assert time.monotonic() < deadline, f"{container.name} stayed {status!r}, expected {wanted!r}"
        time.sleep(0.1)


def running_count(dockerd: Dockerd) -> int:
    client = dockerd.client()
    try:
        return len(client.containers.list())
    finally:
        client.close()


# --- docker ------------------------------------------------------------------------------------------


def test_docker_answers_with_version(dockerd: Dockerd) -> None:
    outcome = check_docker(policy(dockerd.host), 5.0)
    assert outcome.healthy, outcome.reason
    assert set(outcome.details) == {"version", "api_version", "host"}
    client = dockerd.client()
    try:
        version = client.version()
    finally:
        client.close()
    assert outcome.details == {
        "version": version["Version"],
        "api_version": version["ApiVersion"],
        "host": dockerd.host,
    }


def test_null_host_uses_docker_host(dockerd: Dockerd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    outcome = check_docker(policy(None), 5.0)
    assert outcome.healthy, outcome.reason
    assert outcome.details["host"] == dockerd.host


def test_configured_host_wins_over_docker_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/elsewhere.sock")
    missing = f"unix://{tmp_path}/docker.sock"
    outcome = check_docker(policy(missing), 2.0)
    assert not outcome.healthy
    assert missing in outcome.reason
    assert outcome.details == {"version": None, "api_version": None, "host": missing}


def test_engine_that_accepts_and_never_answers_fails_on_time(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX) as mute:
        mute.bind(str(path))
        mute.listen(16)
        started = time.monotonic()
        outcome = check_docker(policy(f"unix://{path}"), 1.0)
        took = time.monotonic() - started
    assert not outcome.healthy
    assert took < 2.0, f"took {took:.2f}s with a 1s deadline"


def test_registry_entry_and_deadline(dockerd: Dockerd) -> None:
    pol = policy(dockerd.host, timeout=3.0)
    assert timeout_for(Component.DOCKER, pol) == 3.0
    assert CHECKS[Component.DOCKER](pol, 3.0).healthy
    assert CHECKS[Component.CONTAINERS] is check_containers


# --- containers --------------------------------------------------------------------------------------


def test_healthy_starting_and_plain_containers_pass(dockerd: Dockerd, run: Run) -> None:
    before = running_count(dockerd)
    good = run(["true"])
    slow = run(["true"], interval_s=3600)  # first probe in an hour: stays "starting"
    plain = run(None)
    wait_health(good, "healthy")
    assert health_of(slow) == "starting"
    outcome = check_containers(policy(dockerd.host, startup_seconds=600), 5.0)
    assert outcome.healthy, outcome.reason
    assert outcome.details["containers_running"] == before + 3
    assert slow.name in outcome.details["starting"]
    assert outcome.details["unhealthy"] == [] and outcome.details["starting_too_long"] == []
    assert plain.name not in outcome.details["starting"]
    assert set(outcome.details) == {"containers_running", "unhealthy", "starting_too_long", "starting"}


def test_unhealthy_container_fails(dockerd: Dockerd, run: Run) -> None:
    bad = run(["false"])
    wait_health(bad, "unhealthy")
    outcome = check_containers(policy(dockerd.host), 5.0)
    assert not outcome.healthy
    assert outcome.details["unhealthy"] == [bad.name]
    assert bad.name in outcome.reason


def test_starting_past_grace_fails(dockerd: Dockerd, run: Run) -> None:
    slow = run(["true"], interval_s=3600)
    time.sleep(1.2)
    assert health_of(slow) == "starting"
    lenient = check_containers(policy(dockerd.host, startup_seconds=600), 5.0)
    assert lenient.healthy and lenient.details["starting"] == [slow.name]
    strict = check_containers(policy(dockerd.host, startup_seconds=1), 5.0)
    assert not strict.healthy
    assert strict.details["starting_too_long"] == [slow.name]
    assert strict.details["starting"] == []
    assert "starting for more than 1s" in strict.reason


def test_container_turning_unhealthy_mid_run(dockerd: Dockerd, run: Run) -> None:
    box = run(["test", "-e", "/tmp/ok"], cmd="touch /tmp/ok; exec sleep 3600")
    wait_health(box, "healthy")
    assert check_containers(policy(dockerd.host), 5.0).healthy
    exit_code, _ = box.exec_run(["rm", "/tmp/ok"])
    assert exit_code == 0
    wait_health(box, "unhealthy")
    outcome = check_containers(policy(dockerd.host), 5.0)
    assert not outcome.healthy
    assert outcome.details["unhealthy"] == [box.name]


def test_daemon_killed_mid_run(fresh_dockerd: Dockerd) -> None:
    pol = policy(fresh_dockerd.host, timeout=2.0)
    assert check_docker(pol, 2.0).healthy
    assert check_containers(pol, 2.0).healthy

    fresh_dockerd.kill()
    started = time.monotonic()
    docker_down = check_docker(pol, 2.0)
    containers_down = check_containers(pol, 2.0)
    took = time.monotonic() - started
    assert not docker_down.healthy and not containers_down.healthy
    assert fresh_dockerd.host in docker_down.reason
    assert containers_down.details["containers_running"] == 0
    assert took < 4.5, f"failing checks took {took:.2f}s"

    fresh_dockerd.restart()
    assert check_docker(pol, 2.0).healthy
    assert check_containers(pol, 2.0).healthy


def test_tcp_endpoint(dockerd: Dockerd) -> None:
    """``tcp://`` speaks plain HTTP to the engine: here through a loopback relay to the real socket."""
    with tcp_relay(dockerd.socket_path) as port:
        host = f"tcp://127.0.0.1:{port}"
        outcome = check_docker(policy(host), 5.0)
        assert outcome.healthy, outcome.reason
        assert outcome.details["host"] == host and outcome.details["version"]
        assert check_containers(policy(host), 5.0).healthy


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("ssh://user@box", "'ssh' endpoints are not supported"),
        ("unix://relative.sock", "needs an absolute path"),
        ("tcp://127.0.0.1", "expected tcp://host:port"),
    ],
)
def test_unsupported_endpoints_fail_with_the_reason(host: str, words: str) -> None:
    outcome = check_docker(policy(host), 1.0)
    assert not outcome.healthy
    assert words in outcome.reason and host in outcome.reason
    assert not check_containers(policy(host), 1.0).healthy


def test_tls_from_the_environment_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, dockerd: Dockerd
) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    outcome = check_docker(policy(None), 2.0)
    assert not outcome.healthy and "DOCKER_TLS_VERIFY is set" in outcome.reason


def test_http_error_answers_and_non_json_fail_the_check(tmp_path: Path) -> None:
    """An endpoint that answers HTTP, but not as the engine does."""
    answers = [
        b'HTTP/1.1 500 Internal Server Error\r\nContent-Length: 27\r\n\r\n{"message":"engine broke"}\n',
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    ]
    reasons = []
    for answer in answers:
        with canned_server(tmp_path / "canned.sock", answer) as host:
            outcome = check_docker(policy(host), 2.0)
        assert not outcome.healthy
        reasons.append(outcome.reason.split(": ", 1)[1])
    assert reasons == [
        "GET /version answered HTTP 500: engine broke",
        "answer to be JSON is not: Expecting value: line 1 column 1 (char 0)",
        "bad chunk size b'zz'",
        "not an HTTP answer: 'SSH-2.0-OpenSSH_9.2'",
        f"answer body larger than {docker_checks.MAX_ANSWER} bytes",
    ]


@contextmanager
def serving(srv: socket.socket, handle: Callable[[socket.socket], None]) -> Iterator[None]:
    """Accept on ``srv`` in a thread and pass each connection to ``handle`` until the block ends."""
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            handle(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(2)
        srv.close()


@contextmanager
def canned_server(path: Path, answer: bytes) -> Iterator[str]:
    """A unix socket that answers every connection with ``answer`` and closes it."""
    path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(8)

    def answer_once(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            conn.recv(4096)
            conn.sendall(answer)

    with serving(srv, answer_once):
        yield f"unix://{path}"


@contextmanager
def tcp_relay(unix_path: Path) -> Iterator[int]:
    """A 127.0.0.1 port whose connections are piped to ``unix_path`` (as socat would)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def relay(conn: socket.socket) -> None:
        up = socket.socket(socket.AF_UNIX)
        up.connect(str(unix_path))
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    port = srv.getsockname()[1]
    with serving(srv, relay):
        yield port


def test_concurrent_calls_share_nothing(dockerd: Dockerd) -> None:
    pol = policy(dockerd.host)
    results: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        ok = check_docker(pol, 5.0).healthy and check_containers(pol, 5.0).healthy
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 8


def test_started_at_parses_engine_timestamps() -> None:
    assert started_at("1970-01-01T00:00:10.123456789Z") == pytest.approx(10.123456)
    assert started_at("2024-02-29T12:00:00+01:00") == 1709204400.0


def test_repeated_checks_leak_no_descriptors(dockerd: Dockerd) -> None:
    pol = policy(dockerd.host)
    assert check_docker(pol, 5.0).healthy and check_containers(pol, 5.0).healthy
    before = len(list(Path("/proc/self/fd").iterdir()))
    for _ in range(30):
        assert check_docker(pol, 5.0).healthy
        assert check_containers(pol, 5.0).healthy
    assert len(list(Path("/proc/self/fd").iterdir())) == before
