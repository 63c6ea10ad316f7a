"""A small HTTP/1.1 client for the agent's own needs: the Docker Engine API and the ``api`` check.

The standard library's ``http.client`` would do, but importing it loads ``ssl`` and the ``email`` package
(about 6 MiB of resident memory for the agent's whole life, for two kinds of GET). This one speaks just
what those need: ``GET`` with ``Connection: close`` on a fresh connection, an answer framed by
``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the connection, and nothing else.

Everything is bounded: the whole exchange (connect, send, every read) by one deadline, the answer's head
by :data:`MAX_HEAD` bytes, its body by ``max_body``. Whatever goes wrong is an :class:`OSError`
(``TimeoutError`` at the deadline, ``ConnectionRefusedError``, ...) or an :class:`HttpError` (the peer
answered, but not with HTTP this client can read); the message is one line.

Endpoints are ``unix:///absolute/path`` (a unix stream socket) and ``tcp://host:port`` (plain TCP; no
TLS), the two forms the Engine API listens on without TLS.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_HEAD = 16 * 1024
MAX_BODY = 4 * 1024 * 1024
_CHUNK = 64 * 1024


class HttpError(Exception):
    """The peer answered, but not with an HTTP response this client accepts."""


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: a unix socket path or a TCP host and port; ``url`` as it was given."""

    url: str
    unix_path: str | None = None
    host: str | None = None
    port: int = 0

    @property
    def host_header(self) -> str:
        if self.unix_path is not None:
            return "localhost"
        return f"[{self.host}]:{self.port}" if ":" in str(self.host) else f"{self.host}:{self.port}"


def endpoint(url: str) -> Endpoint:
    """Parse ``unix:///path`` or ``tcp://host:port``; ``ValueError`` names what is wrong."""
    if url.startswith("unix://"):
        path = url[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"{url!r}: a unix socket needs an absolute path (unix:///run/x.sock)")
        return Endpoint(url, unix_path=path)
    if url.startswith("tcp://"):
        rest = url[len("tcp://") :].rstrip("/")
        if rest.startswith("["):
            host, sep, port = rest[1:].partition("]:")
        else:
            host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{url!r}: expected tcp://host:port")
        return Endpoint(url, host=host, port=int(port))
    scheme = url.partition("://")[0] if "://" in url else url
    raise ValueError(f"{scheme!r} endpoints are not supported (use unix:///path or tcp://host:port)")


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: Mapping[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:  # includes UnicodeDecodeError
            raise HttpError(f"answer to be JSON is not: {exc}") from None


def _left(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"timed out after {timeout:g}s")
    return left


def connect(ep: Endpoint, deadline: float, timeout: float) -> socket.socket:
    """A connected stream socket to ``ep`` (raises ``OSError``)."""
    if ep.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(_left(deadline, timeout))
            sock.connect(ep.unix_path)
        except TimeoutError:
            sock.close()
            raise TimeoutError(f"timed out after {timeout:g}s") from None
        except BaseException:
            sock.close()
            raise
        return sock
    assert ep.host is not None
    try:
        return socket.create_connection((ep.host, ep.port), timeout=_left(deadline, timeout))
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g}s") from None


class _Reader:
    """Reads from ``sock`` with every wait bounded by the exchange's deadline."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    def _fill(self) -> None:
        self.sock.settimeout(_left(self.deadline, self.timeout))
        try:
            data = self.sock.recv(_CHUNK)
        except TimeoutError:
            raise TimeoutError(f"timed out after {self.timeout:g}s") from None
        if not data:
            self.eof = True
        self.buf += data

    def until(self, sep: bytes, limit: int, what: str) -> bytes:
        """Bytes up to ``sep`` (consumed, not returned), at most ``limit`` of them."""
        start = 0
        while True:
            end = self.buf.find(sep, start)
            if end >= 0:
                if end > limit:
                    break
                out = bytes(self.buf[:end])
                del self.buf[: end + len(sep)]
                return out
            if len(self.buf) > limit:
                break
            if self.eof:
                raise HttpError(f"connection closed in the middle of the {what}")
            start = max(0, len(self.buf) - len(sep) + 1)
            self._fill()
        raise HttpError(f"{what} longer than {limit} bytes")

    def exactly(self, n: int, what: str) -> bytes:
        while len(self.buf) < n:
            if self.eof:
                raise HttpError(f"connection closed in the middle of the {what}")
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self, limit: int) -> bytes:
        while not self.eof:
            if len(self.buf) > limit:
                raise HttpError(f"answer body larger than {limit} bytes")
            self._fill()
        out = bytes(self.buf)
        self.buf.clear()
        if len(out) > limit:
            raise HttpError(f"answer body larger than {limit} bytes")
        return out


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError("answer head is not text") from None
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise HttpError(f"not an HTTP answer: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(f"malformed header line {line[:60]!r}")
        headers[name.lower()] = value.strip()
    return int(code), reason.strip(), headers


def _chunked(reader: _Reader, max_body: int) -> bytes:
    body = bytearray()
    while True:
        line = reader.until(b"\r\n", 1024, "chunk size line")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0 or len(body) + size > max_body:
            raise HttpError(f"answer body larger than {max_body} bytes")
        if size == 0:
            while reader.until(b"\r\n", MAX_HEAD, "trailer"):
                pass
            return bytes(body)
        body += reader.exactly(size, "chunk")
        if reader.exactly(2, "chunk") != b"\r\n":
            raise HttpError("chunk not followed by CRLF")


def exchange(
    sock: socket.socket,
    path: str,
    *,
    host: str,
    deadline: float,
    timeout: float,
    max_body: int = MAX_BODY,
    method: str = "GET",
) -> Answer:
    """Send one request on the connected ``sock`` and read its answer (the socket is left open)."""
    if not path.startswith("/") or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in path):
        raise ValueError(f"bad request path {path!r}")
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii")
    sock.settimeout(_left(deadline, timeout))
    try:
        sock.sendall(request)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g}s") from None
    reader = _Reader(sock, deadline, timeout)
    while True:
        status, reason, headers = _parse_head(reader.until(b"\r\n\r\n", MAX_HEAD, "answer head"))
        if not 100 <= status < 200:  # skip interim answers (100 Continue and friends)
            break
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _chunked(reader, max_body)
    elif "content-length" in headers:
        length_text = headers["content-length"]
        if not length_text.isdigit():
            raise HttpError(f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if length > max_body:
            raise HttpError(f"answer body larger than {max_body} bytes")
        body = reader.exactly(length, "answer body")
    else:
        body = reader.rest(max_body)
    return Answer(status, reason, headers, body)


def get(ep: Endpoint, path: str, timeout: float, *, max_body: int = MAX_BODY) -> Answer:
    """``GET path`` on a fresh connection to ``ep``, everything within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    sock = connect(ep, deadline, timeout)
    try:
        return exchange(
            sock, path, host=ep.host_header, deadline=deadline, timeout=timeout, max_body=max_body
        )
    finally:
        sock.close()


__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "Answer",
    "Endpoint",
    "HttpError",
    "connect",
    "endpoint",
    "exchange",
    "get",
]
