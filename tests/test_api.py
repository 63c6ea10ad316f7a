"""The HTTP API, driven by real clients over 127.0.0.1: documents, status codes, bad and slow clients."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from piccolod import api
from piccolod.api import ApiServer, Response, listen_socket
from piccolod.daemon import HEALTH_PATH, Daemon
from piccolod.policy import Component
from tests.agent_helpers import Switch, get, policy_data, running_daemon, wait_for

SEED_COMPONENT_FIELDS = {
    "piccolod": {"status", "version", "pid"},
    "docker": {"status", "version", "containers_running"},
    "tpm": {"status", "version", "manufacturer"},
    "storage": {"status", "free_space_percent", "io_errors"},
    "network": {"status", "connectivity_test", "dns_resolution"},
    "api": {"status"},
}
SEED_FIELDS = {
    "status",
    "timestamp",
    "version",
    "boot_id",
    "uptime_seconds",
    "components",
    "update_status",
    "disk_encryption",
    "startup_health_check",
}


def _all_ok() -> dict[Component, Switch]:
    return {
        Component.DOCKER: Switch(details={"version": "24.0.7"}),
        Component.CONTAINERS: Switch(details={"containers_running": 3, "unhealthy": [], "starting": []}),
        Component.TPM: Switch(details={"version": "2.0", "manufacturer": "IBM"}),
        Component.STORAGE: Switch(details={"free_space_percent": 42.5, "io_errors": 0}),
        Component.NETWORK: Switch(details={"connectivity_test": "passed", "dns_resolution": "passed"}),
        Component.API: Switch(),
    }


def _data() -> dict[str, object]:
    return policy_data(["tpm", "storage", "api"], ["docker", "network"])


def test_health_document_has_every_seed_field_with_real_values() -> None:
    checks = _all_ok()
    with running_daemon(checks, _data()) as (_daemon, port):
        status, headers, body = get(port, HEALTH_PATH)
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc.keys() >= SEED_FIELDS
    for comp, fields in SEED_COMPONENT_FIELDS.items():
        assert doc["components"][comp].keys() >= fields, comp
    assert doc["status"] == "healthy"
    assert doc["timestamp"].endswith("Z")
    assert doc["boot_id"] == "00000000-test-boot-id"
    assert isinstance(doc["uptime_seconds"], int)
    assert doc["uptime_seconds"] > 0
    assert doc["components"]["docker"] == {
        "status": "healthy",
        "version": "24.0.7",
        "containers_running": 3,
        "required": False,
        "reason": "up",
        "duration_seconds": doc["components"]["docker"]["duration_seconds"],
    }
    assert doc["components"]["tpm"]["manufacturer"] == "IBM"
    assert doc["components"]["storage"]["free_space_percent"] == 42.5
    assert doc["components"]["network"]["connectivity_test"] == "passed"
    assert doc["components"]["piccolod"]["version"] == doc["version"]
    assert doc["update_status"] == "up_to_date"
    assert doc["startup_health_check"] == "skipped"
    assert doc["disk_encryption"] == "none"
    assert doc["last_assessment"]["failing"] == []


@pytest.mark.parametrize(
    ("failing", "status", "code"),
    [
        ([], "healthy", 200),
        ([Component.NETWORK], "degraded", 200),
        ([Component.TPM], "unhealthy", 503),
        ([Component.NETWORK, Component.STORAGE], "unhealthy", 503),
    ],
)
def test_status_code_follows_the_verdict(failing: list[Component], status: str, code: int) -> None:
    checks = _all_ok()
    for comp in failing:
        checks[comp].healthy = False
    with running_daemon(checks, _data()) as (_daemon, port):
        got, _, body = get(port, HEALTH_PATH)
    doc = json.loads(body)
    assert (got, doc["status"]) == (code, status)
    assert sorted(doc["last_assessment"]["failing"]) == sorted(str(c) for c in failing)
    for comp in failing:
        assert doc["components"][comp]["status"] == "unhealthy"
        assert doc["components"][comp]["reason"] == "down"


def test_not_listed_components_say_not_checked() -> None:
    checks = _all_ok()
    with running_daemon(checks, policy_data(["storage"])) as (_daemon, port):
        doc = json.loads(get(port, HEALTH_PATH)[2])
    assert doc["components"]["tpm"] == {"status": "not_checked", "version": None, "manufacturer": None}
    assert doc["components"]["storage"]["status"] == "healthy"


def test_requests_read_the_cache_and_never_run_checks() -> None:
    checks = _all_ok()
    with running_daemon(checks, _data()) as (_daemon, port):
        before = checks[Component.TPM].calls
        for _ in range(50):
            assert get(port, HEALTH_PATH)[0] == 200
            assert get(port, "/metrics")[0] == 200
        assert checks[Component.TPM].calls == before == 1


def test_livez_not_found_head_and_method_not_allowed() -> None:
    with running_daemon(_all_ok(), _data()) as (_daemon, port):
        assert get(port, "/livez")[::2] == (200, b"ok")
        assert get(port, "/nope")[0] == 404
        assert get(port, HEALTH_PATH + "?pretty=1")[0] == 200
        status, headers, body = get(port, HEALTH_PATH, method="HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 100
        status, headers, _ = get(port, HEALTH_PATH, method="DELETE")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"


def test_before_the_first_verdict_the_status_is_starting_and_503() -> None:
    release = threading.Event()

    def slow_gate(daemon: Daemon) -> None:
        release.wait(10)
        daemon.ready("gate opened")

    with running_daemon(_all_ok(), _data(), gate=slow_gate) as (daemon, port):
        status, _, body = get(port, HEALTH_PATH)
        doc = json.loads(body)
        assert (status, doc["status"]) == (503, "starting")
        assert doc["startup_health_check"] == "pending"
        assert doc["components"]["tpm"]["status"] == "pending"
        assert doc["components"]["docker"]["status"] == "pending"
        assert doc["last_assessment"] is None
        release.set()
        wait_for(lambda: daemon.state.assessment is not None, what="first runtime assessment")
        assert get(port, HEALTH_PATH)[0] == 200


# --- the server alone: bad and slow clients ---------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ApiServer]:
    routes = {
        "/a": lambda: Response(200, b'{"a":1}\n'),
        "/boom": lambda: Response(200, bytes(1 // int("0"))),
        "/big": lambda: Response(200, b"x" * 4_000_000, "text/plain"),
    }
    srv = ApiServer(
        listen_socket("127.0.0.1:0"),
        routes,
        max_connections=8,
        request_timeout=0.5,
        idle_timeout=1.0,
        max_request_bytes=1024,
    )
    srv.start()
    yield srv
    srv.stop()


def _connect(srv: ApiServer) -> socket.socket:
    s = socket.create_connection(srv.address, timeout=5)
    s.settimeout(5)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _quick_get(srv: ApiServer) -> float:
    started = time.monotonic()
    status, _, body = get(srv.address[1], "/a", timeout=2)
    assert (status, body) == (200, b'{"a":1}\n')
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /a\r\n\r\n", 400),
        (b"GET a HTTP/1.1\r\n\r\n", 400),
        (b"GET /a HTTP/2.0\r\n\r\n", 505),
        (b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        (b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
        (b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
        (b"GET /a HTTP/1.1\r\nX: " + b"y" * 5000 + b"\r\n\r\n", 431),
        (b"GET /a HTTP/1.1\r\nX: " + b"y" * 5000, 431),  # too large even before it ends
    ],
)
def test_malformed_requests_get_an_error_and_a_closed_connection(
    server: ApiServer, request_bytes: bytes, status: int
) -> None:
    with _connect(server) as s:
        s.sendall(request_bytes)
        reply = _read_all(s)  # returns only because the server closes
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:80]
    assert b"Connection: close" in reply
    assert _quick_get(server) < 0.5


def test_a_failing_route_is_a_500_not_a_dead_server(server: ApiServer) -> None:
    assert get(server.address[1], "/boom")[0] == 500
    assert _quick_get(server) < 0.5


def test_keep_alive_and_pipelining(server: ApiServer) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
        reply = _read_all(s)
    assert reply.count(b"HTTP/1.1 200 OK") == 4
    assert reply.count(b"Connection: keep-alive") == 3
    with _connect(server) as s:  # HTTP/1.0 without keep-alive closes after one answer
        s.sendall(b"GET /a HTTP/1.0\r\n\r\n")
        assert _read_all(s).count(b"200 OK") == 1


def test_thousands_of_pipelined_requests_are_all_answered_in_order(server: ApiServer) -> None:
    n = 5000
    got: list[bytes] = []
    with _connect(server) as s:
        reader = threading.Thread(target=lambda: got.append(_read_all(s)))
        reader.start()
        s.sendall(b"GET /a HTTP/1.1\r\n\r\n" * (n - 1) + b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        reader.join(10)
    assert got, "no answer"
    assert got[0].count(b"HTTP/1.1 200 OK") == n - 1
    assert got[0].rindex(b"HTTP/1.1 404 ") > got[0].rindex(b"HTTP/1.1 200 OK")


def test_slow_client_does_not_block_others_and_is_dropped(server: ApiServer) -> None:
    with _connect(server) as slow:
        slow.sendall(b"GET /a HTTP/1.1\r\nHo")  # and then nothing (slowloris)
        latencies = [_quick_get(server) for _ in range(20)]
        assert max(latencies) < 0.4, latencies
        started = time.monotonic()
        reply = _read_all(slow)
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert waited < 0.5 + 0.5  # request_timeout plus one sweep


def test_byte_by_byte_client_cannot_extend_its_deadline(server: ApiServer) -> None:
    with _connect(server) as slow:
        started = time.monotonic()
        try:
            for b in b"GET /a HTTP/1.1\r\nX-Dribble: " + b"z" * 100:
                slow.send(bytes([b]))
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = _read_all(slow)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 2.0


def test_when_full_the_longest_idle_connection_makes_room(server: ApiServer) -> None:
    idle = [_connect(server) for _ in range(8)]
    busy: list[socket.socket] = []
    try:
        wait_for(lambda: server.open_connections == 8, what="8 open connections")
        assert _quick_get(server) < 0.5  # admitted: the oldest idle one was closed for it
        with pytest.raises(ConnectionResetError):  # evicted with an RST: no TIME_WAIT left on the server
            idle[0].recv(1)
        assert server.evicted == 1
        # Even when every open connection is mid-request, a new client is admitted (the oldest goes).
        for s in idle[1:]:
            s.sendall(b"GET /a HTTP/1.1\r\n")
        wait_for(lambda: server.open_connections == 7, what="the evicted connection gone")
        busy.append(_connect(server))
        busy[0].sendall(b"GET /a HTTP/1.1\r\n")
        wait_for(lambda: server.open_connections == 8, what="8 open connections")
        assert _quick_get(server) < 0.5
    finally:
        for s in idle + busy:
            s.close()
    wait_for(lambda: server.open_connections == 0, what="connections closed")


def test_thousands_of_idle_sockets_cannot_fail_the_api_check() -> None:
    """Any local process can open more connections than the cap: the API and the api check still answer.
    (Both ends live in this process: it needs room for 2 x 2,100 descriptors.)"""
    import resource

    from piccolod.checks.api import check_api
    from tests.agent_helpers import make_policy

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    data = policy_data(["tpm", "storage", "api"], interval=60)
    with running_daemon(_all_ok(), data) as (daemon, port):
        assert daemon.server is not None and daemon.server.max_connections == 2048
        hogs = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2100)]
        try:
            wait_for(
                lambda: daemon.server is not None and daemon.server.open_connections == 2048, what="full"
            )
            assert get(port, "/livez")[0] == 200
            assert get(port, HEALTH_PATH)[0] == 200
            outcome = check_api(make_policy({"agent": {"listen": f"127.0.0.1:{port}"}}), 2.0)
            assert outcome.healthy, outcome.reason
            assert daemon.server.evicted >= 2100 - 2048 + 1
        finally:
            for s in hogs:
                s.close()


def test_idle_keep_alive_connections_are_closed(server: ApiServer) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert s.recv(1) == b""  # closed by the server after idle_timeout
        assert 0.5 < time.monotonic() - started < 2.0


def test_client_that_never_reads_is_dropped_and_others_are_served(server: ApiServer) -> None:
    with _connect(server) as hog:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.sendall(b"GET /big HTTP/1.1\r\n\r\n" * 4)
        time.sleep(0.2)
        assert max(_quick_get(server) for _ in range(10)) < 0.4
        wait_for(lambda: server.open_connections == 0, timeout=5, what="non-reading client dropped")


def test_stop_closes_everything() -> None:
    srv = ApiServer(listen_socket("127.0.0.1:0"), {"/a": lambda: Response(200, b"")})
    srv.start()
    port = srv.address[1]
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    srv.stop()
    assert s.recv(1) == b""
    s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_ipv6_loopback() -> None:
    srv = ApiServer("[::1]:0", {"/a": lambda: Response(200, b"six")})
    srv.start()
    try:
        host, port = srv.address
        assert host == "::1"
        with socket.create_connection(("::1", port), timeout=5) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert _read_all(s).endswith(b"\r\n\r\nsix")
    finally:
        srv.stop()


def test_checks_keep_running_while_slow_clients_hang_on() -> None:
    checks = _all_ok()
    data = policy_data(["tpm", "storage", "api"], interval=0.1)
    with running_daemon(checks, data) as (daemon, port):
        slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(50)]
        try:
            for s in slow:
                s.sendall(b"GET /api/v1/system/health HTTP/1.1\r\nHost: x")
            calls = checks[Component.TPM].calls
            wait_for(lambda: checks[Component.TPM].calls >= calls + 5, timeout=5, what="5 more assessments")
            started = time.monotonic()
            assert get(port, HEALTH_PATH)[0] == 200
            assert time.monotonic() - started < 0.4
        finally:
            for s in slow:
                s.close()
        assert daemon.server is not None


# --- fairness and bounded memory under hostile clients ----------------------------------------------


def test_pipelining_clients_do_not_delay_a_well_behaved_one(server: ApiServer) -> None:
    """Four clients keep thousands of pipelined requests for a route that costs 0.5 ms queued; a fifth
    is answered within one fair turn (4 x REQUESTS_PER_TURN x 0.5 ms), not after hundreds of theirs."""

    def slow() -> Response:
        time.sleep(0.0005)
        return Response(200, b"slow")

    server.routes["/slow"] = slow
    stop = threading.Event()

    def pipeline() -> None:
        with _connect(server) as s:
            drain = threading.Thread(target=lambda: _read_all_until_closed(s), daemon=True)
            drain.start()
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    s.sendall(b"GET /slow HTTP/1.1\r\n\r\n" * 500)

    workers = [threading.Thread(target=pipeline, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: server.requests > 2_000, what="the pipelines running")
        latencies = sorted(_quick_get(server) for _ in range(50))
        assert latencies[-1] < 0.1, latencies[-5:]
    finally:
        stop.set()
        for w in workers:
            w.join(5)


def _read_all_until_closed(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while s.recv(65536):
            pass


def test_a_client_that_never_reads_holds_views_of_shared_answers_not_copies() -> None:
    body = b"x" * 100_000
    routes = {"/big": lambda: Response(200, body, "text/plain"), "/a": lambda: Response(200, b'{"a":1}\n')}
    srv = ApiServer(listen_socket("127.0.0.1:0"), routes)
    srv.start()
    try:
        hogs = []
        for _ in range(20):
            s = socket.create_connection(srv.address, timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big HTTP/1.1\r\n\r\n" * 100)  # 10 MB of answers asked for, none read
            hogs.append(s)
        wait_for(lambda: len([c for c in srv._conns.values() if c.out]) == 20, what="20 stuck writers")
        for conn in srv._conns.values():
            assert len(conn.inbuf) <= api.READ_CHUNK
            for v in conn.out:  # the body itself, or a view of it; only heads (small) are per request
                assert (v.obj if isinstance(v, memoryview) else v) is body or len(v) < 1000, "a copy"
            assert sum(len(v) for v in conn.out) <= api.REQUESTS_PER_TURN * (len(body) + 1000)
        assert _quick_get(srv) < 0.2
        for s in hogs:
            s.close()
    finally:
        srv.stop()


def test_a_flood_of_connections_cannot_evict_a_prompt_client(server: ApiServer) -> None:
    """Hundreds of connections that send nothing, re-opened as fast as they are closed: every client
    that sends its request right after connecting is answered."""
    stop = threading.Event()

    def flood() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(server.address, timeout=1))
            if len(held) > 200:
                held.pop(0).close()
        for s in held:
            s.close()

    workers = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: server.evicted > 100, what="evictions")
        assert max(_quick_get(server) for _ in range(30)) < 0.5
    finally:
        stop.set()
        for w in workers:
            w.join(5)


def test_a_closing_answer_survives_unread_input(server: ApiServer) -> None:
    """The connection is drained before it is closed, so the client reads the answer, not an RST."""
    with _connect(server) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n" + b"junk" * 10_000)
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b'{"a":1}\n')


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /a\x1b[31m HTTP/1.1\r\n\r\n",
        b"GET /a\tb HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nX: \x1b[2J\r\n\r\n",
    ],
)
def test_control_characters_in_a_request_are_refused(server: ApiServer, request_bytes: bytes) -> None:
    with _connect(server) as s:
        s.sendall(request_bytes)
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"control characters" in reply


def test_error_bodies_are_json_escaped() -> None:
    body = api.error_body('bad "thing"\n\x1b[31m')
    assert json.loads(body) == {"error": 'bad "thing"\n\x1b[31m'}
    assert b"\x1b" not in body and b"\n" not in body.rstrip(b"\n")


def test_the_probe_channel_answers_first_and_only_this_process_holds_it(server: ApiServer) -> None:
    answer = server.probe("/a", 2.0)
    assert (answer.status, answer.body) == (200, b'{"a":1}\n')
    assert server.open_connections == 0  # probes are not client connections
    server.stop()
    with pytest.raises(ConnectionError, match="not running"):
        server.probe("/a", 1.0)
