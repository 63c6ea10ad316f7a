"""The read-only HTTP API: one thread, one ``selectors`` loop, non-blocking sockets, bounded everything.

Routes return bytes that were prepared elsewhere (the health document is rendered once per assessment;
``/metrics`` reads the registry), so a request costs a parse and a ``send``. A slow or malformed client
cannot hold anything up: sockets never block; a request head must arrive complete within
``request_timeout`` and fit in ``max_request_bytes`` (else 408/431 and the connection is closed); idle
keep-alive connections are closed after ``idle_timeout``; a client that does not read its response is not
read from (its buffer stays one response long) and is dropped at the same deadline. At most
``max_connections`` are open: a new client beyond that is still admitted, by closing the connection that
has waited longest for a request (or, when none is idle, the oldest one), so no local process can lock
others (the ``api`` check among them) out by holding connections open. Request bodies are refused.
HTTP/1.1 keep-alive and pipelining work; ``HEAD`` is answered like ``GET`` without the body.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from piccolod.policy import split_host_port

log = logging.getLogger("piccolod.api")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Route = Callable[[], Response]

_WAKE = object()
_LISTEN = object()
_SWEEP_SECONDS = 0.25
_OUT_BATCH = 256 * 1024  # answers prepared per connection before waiting for the client to read


class _Conn:
    __slots__ = ("close_after", "closed", "deadline", "idle_since", "inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.idle_since = time.monotonic()  # when it last finished a request (or was accepted)
        self.inbuf = bytearray()
        self.outbuf = b""
        self.deadline = deadline
        self.close_after = False
        self.closed = False


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _head(status: int, content_type: str, length: int, keep_alive: bool) -> bytes:
    phrase = HTTPStatus(status).phrase
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"Cache-Control: no-store\r\nConnection: {connection}\r\n\r\n"
    ).encode("ascii")


def _error(status: int, message: str) -> bytes:
    body = f'{{"error":"{message}"}}\n'.encode()
    return _head(status, "application/json", len(body), False) + body


def listen_socket(listen: str, backlog: int = 512) -> socket.socket:
    """A non-blocking listening TCP socket for ``host:port`` or ``[v6]:port`` (port 0: any free port)."""
    if listen.endswith(":0"):
        host, port = listen[:-2].strip("[]"), 0
    else:
        host, port = split_host_port(listen)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ApiServer:
    """Serves ``routes`` (path -> callable returning a :class:`Response`) from one background thread."""

    def __init__(
        self,
        listen: str | socket.socket,
        routes: Mapping[str, Route],
        *,
        max_connections: int = 256,
        request_timeout: float = 5.0,
        idle_timeout: float = 15.0,
        max_request_bytes: int = 8192,
    ) -> None:
        self._listener = listen if isinstance(listen, socket.socket) else listen_socket(listen)
        self._listener.setblocking(False)
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_request_bytes = max_request_bytes
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.evicted = 0  # connections closed to admit new ones when full

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def start(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, _LISTEN)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    # --- the loop ---------------------------------------------------------------------------------

    def _serve(self) -> None:
        next_sweep = time.monotonic() + _SWEEP_SECONDS
        while not self._stop.is_set():
            try:
                events = self._sel.select(_SWEEP_SECONDS)
            except OSError:
                if self._stop.is_set():
                    return
                raise
            for key, mask in events:
                if key.data is _LISTEN:
                    self._accept()
                elif key.data is _WAKE:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    conn: _Conn = key.data
                    try:
                        if mask & selectors.EVENT_WRITE:
                            self._flush(conn)
                        elif mask & selectors.EVENT_READ:
                            self._read(conn)
                    except Exception:
                        log.exception("dropping a connection after an internal error")
                        self._close(conn)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_SECONDS
                self._sweep(now)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving the others
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections and not self._evict():
                with contextlib.suppress(OSError):
                    sock.send(_error(503, "too many connections"))
                sock.close()
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, time.monotonic() + self.idle_timeout)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _evict(self) -> bool:
        """Make room for one more connection: close the one idle longest, else the oldest one."""
        idle = [c for c in self._conns.values() if not c.inbuf and not c.outbuf]
        victims = idle or list(self._conns.values())
        if not victims:
            return False
        self.evicted += 1
        self._close(min(victims, key=lambda c: c.idle_since))
        return True

    def _sweep(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.inbuf and not conn.outbuf:
                with contextlib.suppress(OSError):
                    conn.sock.send(_error(408, "request not complete in time"))
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        conn.closed = True
        fd = conn.sock.fileno()
        if fd >= 0:
            self._conns.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(conn.sock)
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        if not conn.inbuf:
            conn.deadline = time.monotonic() + self.request_timeout
        conn.inbuf += data
        self._pump(conn)

    def _next_head(self, conn: _Conn) -> bytes | None:
        """Take one complete request head off the input buffer; None if there is none (yet)."""
        end, sep = conn.inbuf.find(b"\r\n\r\n"), 4
        if end < 0:
            end, sep = conn.inbuf.find(b"\n\n"), 2
        if end < 0 or end > self.max_request_bytes:
            return None
        head = bytes(conn.inbuf[:end])
        del conn.inbuf[: end + sep]
        return head

    def _pump(self, conn: _Conn) -> None:
        """Answer the complete requests in the buffer, at most ``_OUT_BATCH`` bytes of answers at a
        time: pipelined requests are answered as the client reads, never all buffered at once."""
        while not conn.closed and not conn.outbuf:
            out: list[bytes] = []
            size = 0
            head = None
            while not conn.close_after and size < _OUT_BATCH:
                head = self._next_head(conn)
                if head is None:
                    break
                out.append(self._respond(conn, head))
                size += len(out[-1])
            if head is None and not conn.close_after and len(conn.inbuf) > self.max_request_bytes:
                out.append(_error(431, "request head too large"))
                conn.close_after = True
            if not out:
                return
            wait = self.request_timeout if conn.inbuf else self.idle_timeout
            conn.idle_since = time.monotonic()
            conn.deadline = conn.idle_since + wait
            self._send(conn, b"".join(out))
            if head is None:
                return

    def _send(self, conn: _Conn, data: bytes) -> None:
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent < len(data):
            conn.outbuf = data[sent:]
            conn.deadline = time.monotonic() + self.idle_timeout
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        elif conn.close_after:
            self._close(conn)

    def _flush(self, conn: _Conn) -> None:
        data, conn.outbuf = conn.outbuf, b""
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        self._send(conn, data)
        if not conn.closed and not conn.outbuf and conn.inbuf:
            self._pump(conn)

    # --- HTTP -------------------------------------------------------------------------------------

    def _respond(self, conn: _Conn, head: bytes) -> bytes:
        self.requests += 1
        try:
            method, path, keep_alive = self._parse(head)
        except _BadRequest as exc:
            conn.close_after = True
            return _error(exc.status, str(exc))
        if not keep_alive:
            conn.close_after = True
        if method not in ("GET", "HEAD"):
            body = b'{"error":"read-only API: GET and HEAD only"}\n'
            return (
                _head(405, "application/json", len(body), keep_alive)[:-2]
                + b"Allow: GET, HEAD\r\n\r\n"
                + body
            )
        route = self.routes.get(path.split("?", 1)[0])
        if route is None:
            resp = Response(404, b'{"error":"not found"}\n')
        else:
            try:
                resp = route()
            except Exception:
                log.exception("route %s failed", path)
                resp = Response(500, b'{"error":"internal error"}\n')
        head_bytes = _head(resp.status, resp.content_type, len(resp.body), keep_alive)
        return head_bytes if method == "HEAD" else head_bytes + resp.body

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str, bool]:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise _BadRequest(400, "request head is not ASCII") from None
        lines = text.split("\n")
        parts = lines[0].rstrip("\r").split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
            raise _BadRequest(400, "malformed request line")
        method, path, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(505, "HTTP/1.0 or HTTP/1.1 only")
        connection = ""
        for line in lines[1:]:
            name, colon, value = line.rstrip("\r").partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            lname = name.lower()
            if lname == "connection":
                connection = value.strip().lower()
            elif (lname == "content-length" and value.strip() != "0") or lname == "transfer-encoding":
                raise _BadRequest(413, "request bodies are not accepted")
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return method, path, keep_alive
