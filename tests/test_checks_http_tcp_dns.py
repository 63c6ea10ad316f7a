"""``http``, ``tcp`` and ``dns`` checks against real servers: an HTTP server on 127.0.0.1 and ::1 that
answers, fails, redirects, stalls or sends too much; listeners, refused ports and black holes; and a DNS
responder in a private network namespace (tests/fixtures/dnsns.py).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from piccolod.checks.kinds.dns import check_dns
from piccolod.checks.kinds.http import MAX_BODY, check_http
from piccolod.checks.kinds.tcp import check_tcp
from piccolod.checkspec import DnsCheck, HttpCheck, JsonMatch, TcpCheck
from piccolod.policy import PolicyFile
from piccolod.result import Outcome
from tests.fixtures.dnsns import in_netns
from tests.fixtures.httpserve import serving
from tests.test_checks_network import black_hole, listener, refused  # noqa: F401 - fixtures

POLICY = PolicyFile()
READY = {"status": "ok", "checks": {"db": "up", "queue": {"depth": 3, "ok": True}}, "items": [{"state": "a"}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release: threading.Event

    def do_GET(self) -> None:
        path = self.path
        if path.startswith("/ready"):
            self._send(200, json.dumps(READY).encode(), "application/json")
        elif path == "/starting":
            self._send(503, b'{"status": "starting"}', "application/json")
        elif path == "/moved":
            self.send_response(301)
            self.send_header("Location", "/ready")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/text":
            self._send(200, b"<html>fine</html>", "text/html")
        elif path == "/huge":
            self._send(200, b"x" * (MAX_BODY + 1), "text/plain")
        elif path == "/stall":
            self.release.wait(30)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            body = json.dumps({"status": "ok"}).encode()
            for part in (body[:5], body[5:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture
def server() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a real HTTP server for this test."""
    yield from _serve(ThreadingHTTPServer, "127.0.0.1", "127.0.0.1")


@pytest.fixture
def server6() -> Iterator[str]:
    yield from _serve(V6Server, "::1", "[::1]")


def _serve(cls: type[ThreadingHTTPServer], host: str, shown: str) -> Iterator[str]:
    release = threading.Event()
    handler = type("H", (Handler,), {"release": release})
    with serving(cls((host, 0), handler)) as httpd:
        try:
            yield f"http://{shown}:{httpd.server_address[1]}"
        finally:
            release.set()  # before the shutdown: a handler may be waiting on it


def http(url: str, timeout: float = 3.0, **kw: Any) -> tuple[Outcome, float]:
    started = time.monotonic()
    out = check_http("web", HttpCheck(url=url, **kw), POLICY, timeout)
    return out, time.monotonic() - started


def test_an_answer_with_the_status_passes(server: str, server6: str) -> None:
    for base in (server, server6):
        out, _ = http(f"{base}/ready?verbose=1")
        assert out.healthy, out.reason
        assert out.reason == f"GET {base}/ready?verbose=1 answered HTTP 200"
        assert out.details == {"url": f"{base}/ready?verbose=1", "status_code": 200, "expected_status": 200}
    assert http(f"{server}/starting", status=503)[0].healthy  # the status asked for, whatever it is


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/starting", 200, "answered HTTP 503, not 200"),
        ("/moved", 200, "answered HTTP 301, not 200"),  # redirects are not followed
        ("/nowhere", 200, "answered HTTP 404, not 200"),
        ("/huge", 200, f"failed: answer body larger than {MAX_BODY} bytes"),
    ],
)
def test_other_answers_fail(server: str, path: str, status: int, reason: str) -> None:
    out, _ = http(f"{server}{path}", status=status)
    assert not out.healthy
    assert out.reason == f"GET {server}{path} {reason}"


@pytest.mark.parametrize(
    ("field", "equals", "healthy", "reason"),
    [
        ("status", "ok", True, ""),
        ("checks.db", "up", True, ""),
        ("checks.queue.depth", 3.0, True, ""),
        ("checks.queue.ok", True, True, ""),
        ("items.0.state", "a", True, ""),
        ("status", "down", False, "but status is 'ok', not 'down'"),
        ("checks.queue.depth", "3", False, "but checks.queue.depth is 3, not '3'"),
        ("checks.queue.ok", 1, False, "but checks.queue.ok is True, not 1"),
        ("checks.cache", "up", False, "but the answer has no field checks.cache"),
        ("items.5.state", "a", False, "but the answer has no field items.5.state"),
    ],
)
def test_a_json_field_must_have_its_value(
    server: str, field: str, equals: object, healthy: bool, reason: str
) -> None:
    out, _ = http(f"{server}/ready", json=JsonMatch(field=field, equals=equals))
    assert out.healthy is healthy, out.reason
    if reason:
        assert out.reason == f"GET {server}/ready answered HTTP 200, {reason}"


def test_json_wanted_from_an_answer_that_is_not(server: str) -> None:
    out, _ = http(f"{server}/text", json=JsonMatch(field="status", equals="ok"))
    assert not out.healthy and out.reason.endswith("but the answer is not JSON")
    chunked, _ = http(f"{server}/chunked", json=JsonMatch(field="status", equals="ok"))
    assert chunked.healthy, chunked.reason


def test_a_server_that_never_answers_fails_on_time(server: str) -> None:
    out, took = http(f"{server}/stall", timeout=0.5)
    assert not out.healthy and out.reason == f"GET {server}/stall failed: timed out after 0.5s"
    assert 0.4 < took < 1.2


def test_a_refused_or_unresolvable_address_fails_at_once(refused: str) -> None:  # noqa: F811
    out, took = http(f"http://{refused}/ready", timeout=5)
    assert not out.healthy and out.reason == f"GET http://{refused}/ready failed: connection refused"
    assert took < 1.0


def test_tcp(listener: str, refused: str, black_hole: str) -> None:  # noqa: F811
    def tcp(address: str, timeout: float = 2.0) -> tuple[Outcome, float]:
        started = time.monotonic()
        return check_tcp("sock", TcpCheck(address=address), POLICY, timeout), time.monotonic() - started

    ok, _ = tcp(listener)
    assert ok.healthy and ok.reason == f"{listener} accepts connections"
    no, took = tcp(refused)
    assert not no.healthy and no.reason == f"{refused}: connection refused" and took < 1.0
    hole, took = tcp(black_hole, 0.5)
    assert not hole.healthy and hole.reason == f"{black_hole}: timed out after 0.5s"
    assert 0.4 < took < 1.2


def dns_cases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs inside the namespace (tests.fixtures.dnsns.in_netns)."""
    out = []
    for case in cases:
        started = time.monotonic()
        o = check_dns("ns", DnsCheck(name=case["name"]), POLICY, case["timeout"])
        out.append(
            {
                "healthy": o.healthy,
                "reason": o.reason,
                "details": o.details,
                "took": time.monotonic() - started,
            }
        )
    return out


def test_dns_in_a_private_namespace(tmp_path: Path) -> None:
    cases = [
        {"name": "update.piccolo.test", "timeout": 3.0},
        {"name": "nothing-here.invalid", "timeout": 3.0},
        {"name": "silent.test", "timeout": 1.0},
    ]
    found, unknown, silent = in_netns(tmp_path, "tests.test_checks_http_tcp_dns:dns_cases", cases)
    assert found["healthy"] and found["reason"] == "update.piccolo.test resolves to 127.0.0.10"
    assert found["details"] == {"name": "update.piccolo.test", "addresses": ["127.0.0.10"]}
    assert not unknown["healthy"] and unknown["reason"].startswith(
        "nothing-here.invalid: name resolution failed"
    )
    assert not silent["healthy"] and silent["reason"] == "silent.test: timed out after 1s"
    assert silent["took"] < 1.5, "a silent resolver held the check past its deadline"
