"""The api check against real HTTP servers on loopback: answering, failing, refusing and hanging."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from piccolod.checks import CHECKS, timeout_for
from piccolod.checks.api import check_api
from piccolod.policy import Agent, Component, HealthPolicy, PolicyFile, Thresholds


def policy(listen: str, timeout: float = 2.0) -> PolicyFile:
    return PolicyFile(
        health_policy=HealthPolicy(thresholds=Thresholds(network_timeout_seconds=timeout)),
        agent=Agent(listen=listen),
    )


class Server(ThreadingHTTPServer):
    status = 200
    paths: list[str]
    listen: str


class V6Server(Server):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = b"ok\n" if self.server.status == 200 else b"not ready\n"
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


Serve = Callable[..., Server]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an HTTP server on a random 127.0.0.x (or ::1) port; ``.listen`` is its ``host:port``."""
    servers: list[Server] = []

    def start(status: int = 200, v6: bool = False) -> Server:
        cls = V6Server if v6 else Server
        server = cls(("::1" if v6 else f"127.0.0.{random.randint(2, 254)}", 0), Handler)
        server.status, server.paths = status, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        assert isinstance(host, str)
        server.listen = f"[{host}]:{port}" if v6 else f"{host}:{port}"
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_livez_200_passes_and_only_livez_is_asked(serve: Serve) -> None:
    server = serve()
    outcome = check_api(policy(server.listen), 2.0)
    assert outcome.healthy, outcome.reason
    assert outcome.details == {"url": f"http://{server.listen}/livez", "status_code": 200, "channel": "tcp"}
    assert outcome.reason.endswith("over TCP")
    assert server.paths == ["/livez"]


def test_ipv6_listen_address(serve: Serve) -> None:
    listen = serve(v6=True).listen
    outcome = check_api(policy(listen), 2.0)
    assert outcome.healthy, outcome.reason
    assert outcome.details["url"] == f"http://{listen}/livez"


def test_non_200_fails_with_the_status(serve: Serve) -> None:
    listen = serve(status=503).listen
    outcome = check_api(policy(listen), 2.0)
    assert not outcome.healthy
    assert outcome.details["status_code"] == 503
    assert "HTTP 503" in outcome.reason


def test_nothing_listening_fails_at_once() -> None:
    with socket.socket() as sock:
        sock.bind((f"127.0.0.{random.randint(2, 254)}", 0))  # bound, not listening: RST
        listen = "{}:{}".format(*sock.getsockname())
        started = time.monotonic()
        outcome = check_api(policy(listen), 2.0)
    assert time.monotonic() - started < 1.0
    assert not outcome.healthy
    assert outcome.details == {"url": f"http://{listen}/livez", "status_code": None, "channel": "tcp"}
    assert "connection refused" in outcome.reason


def test_server_that_accepts_and_never_answers_fails_by_the_deadline() -> None:
    with socket.socket() as sock:
        sock.bind((f"127.0.0.{random.randint(2, 254)}", 0))
        sock.listen(16)  # the kernel completes the handshake; nobody ever reads or answers
        listen = "{}:{}".format(*sock.getsockname())
        started = time.monotonic()
        outcome = check_api(policy(listen, timeout=1.0), 1.0)
        took = time.monotonic() - started
    assert not outcome.healthy
    assert outcome.details["status_code"] is None
    assert 0.9 < took < 1.5, f"took {took:.2f}s with a 1s deadline"


def test_registry_entry(serve: Serve) -> None:
    pol = policy(serve().listen, timeout=4.0)
    assert timeout_for(Component.API, pol) == 4.0
    assert CHECKS[Component.API](pol, 4.0).healthy


# --- inside the agent: the private probe channel -----------------------------------------------------


def _hog(port: int, kind: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "pipeline":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n" * 2000)  # and never reads the answers
    elif kind == "partial":
        s.sendall(b"GET /livez HTTP/1.1\r\nX-Slow: ")
    return s


@pytest.mark.parametrize("kind", ["idle", "pipeline", "partial"])
def test_inside_the_agent_no_local_client_can_fail_the_check(kind: str) -> None:
    """Every connection slot taken, again and again: the check goes through the private channel."""
    from tests.agent_helpers import Switch, policy_data, running_daemon, wait_for

    checks = {c: Switch() for c in Component}
    with running_daemon(checks, policy_data(["tpm", "api"])) as (daemon, port):
        assert daemon.server is not None
        hogs = [_hog(port, kind) for _ in range(daemon.server.max_connections + 50)]
        try:
            pol = daemon.policy
            for _ in range(5):
                started = time.monotonic()
                outcome = check_api(pol, 2.0)
                assert outcome.healthy, outcome.reason
                assert time.monotonic() - started < 0.5
            assert outcome.details["channel"] == "private"
            assert "over the agent's private probe channel" in outcome.reason
            # Full: idle and partial ones are evicted for newcomers (non-readers time out instead), as the
            # loop takes the backlog in, which on a busy host may be after the checks above.
            if kind != "pipeline":
                server = daemon.server
                wait_for(lambda: server.evicted > 0, timeout=10, what="an idle connection evicted")
        finally:
            for s in hogs:
                s.close()


def test_a_stuck_api_loop_fails_the_check_by_its_deadline() -> None:
    from piccolod.api import ApiServer, Response, listen_socket

    release = threading.Event()

    def stuck() -> Response:  # one request that never finishes holds the whole loop
        release.wait(10)
        return Response(200, b"late")

    server = ApiServer(
        listen_socket("127.0.0.1:0"), {"/stuck": stuck, "/livez": lambda: Response(200, b"ok")}
    )
    server.start()
    listen = "{}:{}".format(*server.address)
    server.publish(listen)
    try:
        assert check_api(policy(listen), 1.0).healthy
        hung = socket.create_connection(server.address, timeout=5)
        hung.sendall(b"GET /stuck HTTP/1.1\r\n\r\n")
        time.sleep(0.1)
        started = time.monotonic()
        outcome = check_api(policy(listen), 1.0)
        took = time.monotonic() - started
        assert not outcome.healthy
        assert "timed out after 1s" in outcome.reason and outcome.details["channel"] == "private"
        assert 0.9 < took < 1.5
        release.set()
        hung.close()
        time.sleep(0.1)
        assert check_api(policy(listen), 1.0).healthy
    finally:
        release.set()
        server.stop()
    assert check_api(policy(listen), 1.0).details["channel"] == "tcp"  # stopped: no longer published


def test_a_closed_listener_fails_the_check() -> None:
    from piccolod.api import ApiServer, Response, listen_socket

    listener = listen_socket("127.0.0.1:0")
    server = ApiServer(listener, {"/livez": lambda: Response(200, b"ok")})
    server.start()
    listen = "{}:{}".format(*server.address)
    server.publish(listen)
    try:
        listener.close()  # what a bug closing the wrong descriptor would do
        outcome = check_api(policy(listen), 1.0)
        assert not outcome.healthy and "is not listening" in outcome.reason
    finally:
        server.stop()


def test_an_agent_that_could_not_bind_never_asks_whoever_holds_the_address(serve: Serve) -> None:
    """A squatter answers 200 at the agent's address: the agent's own check must still fail."""
    from piccolod.assess import Assessor
    from piccolod.daemon import Daemon
    from tests.agent_helpers import FACTS, make_policy

    squatter = serve()
    startup = {"required_components": ["api"], "optional_components": []}
    pol = make_policy({"health_policy": {"startup": startup}, "agent": {"listen": squatter.listen}})
    daemon = Daemon(pol, assessor=Assessor(CHECKS, timeout_for), facts=FACTS, env={})
    assert daemon.api_error is not None and "cannot listen on" in daemon.api_error
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert daemon.is_ready.wait(10)
        assessment = daemon.state.assessment
        assert assessment is not None
        api = assessment.result(Component.API)
        assert api is not None and not api.healthy
        assert api.reason.startswith("the agent has no HTTP API: cannot listen on")
        assert squatter.paths == []
    finally:
        daemon.stop()
        thread.join(10)
    assert check_api(pol, 1.0).healthy  # from outside the agent, the squatter is what answers
