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
    assert outcome.details == {"url": f"http://{server.listen}/livez", "status_code": 200}
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
    assert outcome.details == {"url": f"http://{listen}/livez", "status_code": None}
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
