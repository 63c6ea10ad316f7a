"""The HTTP API under a seeded mutation fuzz: thousands of damaged requests from a real client over 127.0.0.1.

Every input is a valid request (or a pipelined pair) with bytes flipped, inserted, deleted, duplicated or
cut, or plain random bytes. Each goes over a fresh connection whose writing side is then shut, and the
server's whole answer is read until it closes. The contract: the server never dies, every answer it
gives is a well-formed HTTP/1.1 response with a status from the documented set and exactly the body its
``Content-Length`` announces (a 200 only with a route's own body), nothing takes longer than the request
timeout, and afterwards no connection is left open and a well-behaved client is answered at once.
"""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Iterator

import pytest

from piccolod.api import ApiServer, Response, listen_socket
from tests.agent_helpers import get, wait_for

SEED = 20261130
CASES = 5000
BODIES = {"/a": b'{"a":1}\n', "/livez": b"ok"}
STATUSES = {200, 400, 404, 405, 408, 413, 431, 503, 505}
VALID = (
    b"GET /a HTTP/1.1\r\nHost: piccolo\r\n\r\n",
    b"HEAD /livez HTTP/1.1\r\n\r\n",
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /a?x=1 HTTP/1.1\r\nConnection: close\r\nAccept: */*\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\nGET /livez HTTP/1.1\r\n\r\n",
    b"GET /nope HTTP/1.1\r\n\r\n",
)
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [A-Za-z ]+")


def mutate(rng: random.Random) -> bytes:
    """One damaged request."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randrange(1, 3000))
    data = bytearray(rng.choice(VALID))
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:  # insert bytes, often the ones HTTP framing cares about
            data[at:at] = rng.choice([b"\r", b"\n", b"\r\n", b":", b" ", b"\x00", b"\xff", rng.randbytes(3)])
        elif op == 2 and data:  # delete a range
            del data[at : at + rng.randrange(1, 12)]
        elif op == 3:  # duplicate a range (long headers, repeated lines)
            piece = data[at : at + rng.randrange(1, 40)]
            data[at:at] = piece * rng.randrange(1, 60)
        else:  # cut
            del data[at:]
    return bytes(data)


def responses(reply: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """Split a reply stream into (status, head, body); fail on anything that is not well formed."""
    rest = reply
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"an unterminated response head: {head[:120]!r}"
        lines = head.split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        assert m, f"a bad status line: {lines[0][:120]!r}"
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(headers[b"Content-Length"])
        status = int(m[1])
        # A HEAD answer announces the length of a body it does not send (no body here starts "HTTP/").
        head_only = not rest or rest.startswith(b"HTTP/1.1 ")
        body_length = 0 if head_only else length
        body, rest = rest[:body_length], rest[body_length:]
        assert len(body) == body_length, f"a body cut short: {body[:80]!r}"
        yield status, head, body


@pytest.fixture
def server() -> Iterator[ApiServer]:
    routes = {path: (lambda body=body: Response(200, body)) for path, body in BODIES.items()}
    srv = ApiServer(
        listen_socket("127.0.0.1:0"), routes, max_connections=64, request_timeout=1.0, idle_timeout=2.0
    )
    srv.start()
    yield srv
    srv.stop()


def exchange(srv: ApiServer, data: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(srv.address, timeout=5) as s:
        s.settimeout(5)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server closed first (it may answer and close mid-request): read what it said
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out, time.monotonic() - started


def test_damaged_requests_never_break_the_server(server: ApiServer) -> None:
    rng = random.Random(SEED)
    seen: set[int] = set()
    slowest = 0.0
    for case in range(CASES):
        data = mutate(rng)
        reply, took = exchange(server, data)
        slowest = max(slowest, took)
        for status, head, body in responses(reply):
            assert status in STATUSES, f"case {case}: status {status} for {data[:80]!r}"
            seen.add(status)
            if status == 200:
                assert body in (*BODIES.values(), b""), f"case {case}: a 200 with {body[:80]!r}"
            if status in {400, 408, 413, 431, 505}:  # a request it could not parse ends the connection
                assert b"Connection: close" in head, f"case {case}: an error that keeps the connection"
    assert slowest < server.request_timeout + 1.0, f"the slowest exchange took {slowest:.2f}s"
    # The fuzz reached the interesting answers, not only one kind of failure.
    assert {200, 400, 404} <= seen, seen
    wait_for(lambda: server.open_connections == 0, timeout=5)
    status, _, body = get(server.address[1], "/a", timeout=2)
    assert (status, body) == (200, BODIES["/a"])


def test_the_fuzz_check_can_fail() -> None:
    """The response checker refuses what a broken server might send."""
    with pytest.raises(AssertionError):
        list(responses(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"))
    with pytest.raises(AssertionError):
        list(responses(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"))
    ok = list(responses(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + BODIES["/a"]))
    assert ok[0][0] == 200
    assert ok[0][2] == BODIES["/a"]
