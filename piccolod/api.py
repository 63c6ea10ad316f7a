"""The read-only HTTP API: one thread, one ``selectors`` loop, non-blocking sockets, bounded everything.

Routes return bytes that were prepared elsewhere (the health document is rendered once per assessment,
``/metrics`` once per change), so a request costs a parse and a ``send`` of shared bytes. No local client
can make the server use memory or descriptors without bound, or hold other clients up:

- **Fair turns.** Each turn of the loop answers at most :data:`REQUESTS_PER_TURN` requests per
  connection and then moves on to the next one (round robin), so a client pipelining thousands of
  requests gets its answers a few at a time, interleaved with everyone else's.
- **Bounded buffers.** A connection is read from only when its buffer holds no complete request, at most
  :data:`READ_CHUNK` bytes at a time, and never while its previous answers are still unsent: a request
  head must fit in ``max_request_bytes`` (else 431). Answers are not copied per connection: what waits for
  a client that does not read is a list of views of the shared response bytes (the kernel's send buffer is
  capped at :data:`SEND_BUFFER` too), and such a client is dropped ``request_timeout`` after it last
  took any of it.
- **Deadlines.** A new connection must send its first request, and any request head must arrive complete,
  within ``request_timeout`` (else 408 and the connection is closed); an idle keep-alive connection is
  closed after ``idle_timeout``. Dribbling bytes does not extend a deadline.
- **A connection cap that cannot be used to lock others out.** At most ``max_connections`` clients are
  open (2,048 by default; the soft descriptor limit is raised to fit them, or the cap lowered); beyond
  that a new client is still admitted, by closing an open one in this order: one already answered and
  closing, one that has not sent a complete request yet (oldest first), one that does not read its
  answers, one sending a slow request, an idle keep-alive one (longest idle first); one being answered
  goes last. A client is read
  as soon as it is accepted and connections accepted in the same turn are never the ones closed, so a
  client that sends its request promptly is answered whatever the others do.
- **Bounded accepting.** At most :data:`ACCEPT_PER_TURN` connections (and half of ``max_connections``)
  are accepted per turn, after the turn's reads and answers, so a flood of connections cannot starve the
  clients already in. When the process runs out of descriptors, accepting pauses for a moment instead of
  spinning.

**The private probe channel.** :meth:`ApiServer.probe` asks the loop for a path over a socket pair that
only this process holds: no other process can connect to it, fill its slot or delay it beyond one turn
of the loop (probes are served first in every turn and are never evicted). The ``api`` check uses it
in the agent itself (:func:`published` finds the agent's server by its listen address); see
:mod:`piccolod.checks.api` for what that proves.

HTTP/1.1 keep-alive and pipelining work; ``HEAD`` is answered like ``GET`` without the body; request
bodies are refused.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import re
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from piccolod import http_client
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
READ_CHUNK = 1024  # bytes read from a connection at a time
REQUESTS_PER_TURN = 8  # answers prepared per connection per turn of the loop
ACCEPT_PER_TURN = 64  # connections accepted per turn
SEND_BUFFER = 32 * 1024  # SO_SNDBUF of accepted TCP connections (the kernel doubles it)
MAX_PROBES = 8  # probes waiting for the loop at once
SPARE_DESCRIPTORS = 128  # kept free of client connections for everything else the agent opens
_ACCEPT_PAUSE_SECONDS = 0.1  # after EMFILE and friends
LINGER_SECONDS = 1.0  # how long a closing connection's unread input is drained (so no RST eats the answer)
LINGER_BYTES = 256 * 1024
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LINGER_OFF = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {l_onoff=1, l_linger=0}
_CONTROL = re.compile(
    rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
)  # what a request head must not hold (tab, CR, LF may)


class _Conn:
    __slots__ = (
        "accepted",
        "answered",
        "close_after",
        "closed",
        "deadline",
        "draining",
        "events",
        "fd",
        "idle_since",
        "inbuf",
        "out",
        "probe",
        "queued",
        "sock",
    )

    def __init__(self, sock: socket.socket, deadline: float, *, probe: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.probe = probe
        self.accepted = self.idle_since = time.monotonic()
        self.deadline = deadline
        self.inbuf = bytearray()
        self.out: list[bytes | memoryview] = []  # answers not yet taken by the client (shared bytes)
        self.answered = 0
        self.close_after = False
        self.closed = False
        self.draining = 0  # > 0: the answer is out, the write side shut; bytes still to discard
        self.queued = False  # in the ready queue: holds complete requests to answer
        self.events = 0  # what the selector watches for


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


def error_body(message: str) -> bytes:
    """``{"error": message}`` as JSON: quotes, backslashes and control characters escaped."""
    return json.dumps({"error": message}).encode("ascii") + b"\n"


def _error(status: int, message: str) -> bytes:
    body = error_body(message)
    return _head(status, "application/json", len(body), False) + body


def listen_socket(listen: str, backlog: int = 4096) -> socket.socket:
    """A non-blocking listening TCP socket for ``host:port`` or ``[v6]:port`` (port 0: any free port).

    The backlog is large (the kernel caps it at ``net.core.somaxconn``) so that a burst of connections
    waits in the kernel's queue rather than having its handshakes dropped and retried a second later.
    """
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


def _room_for(connections: int) -> int:
    """Raise the soft descriptor limit (within the hard one) so ``connections`` clients fit beside
    SPARE_DESCRIPTORS others; returns how many fit after all (fewer when the limit cannot be raised)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return connections
    want = connections + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
            soft = top
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - SPARE_DESCRIPTORS))


# --- the agent's own server, found by the api check ---------------------------------------------------

_published: dict[str, ApiServer | str] = {}
_published_lock = threading.Lock()


def publish(listen: str, server: ApiServer | str) -> None:
    """Make ``server`` (or, as a string, why this agent has no server) the agent's API at ``listen``."""
    with _published_lock:
        _published[listen] = server


def unpublish(listen: str, server: ApiServer | str) -> None:
    with _published_lock:
        if _published.get(listen) is server:
            del _published[listen]


def published(listen: str) -> ApiServer | str | None:
    """The server this process runs for ``listen``, why it has none, or None (not this process's)."""
    with _published_lock:
        return _published.get(listen)


class ApiServer:
    """Serves ``routes`` (path -> callable returning a :class:`Response`) from one background thread."""

    def __init__(
        self,
        listen: str | socket.socket,
        routes: Mapping[str, Route],
        *,
        max_connections: int = 2048,
        request_timeout: float = 5.0,
        idle_timeout: float = 15.0,
        max_request_bytes: int = 8192,
    ) -> None:
        self._listener = listen if isinstance(listen, socket.socket) else listen_socket(listen)
        self._listener.setblocking(False)
        with contextlib.suppress(OSError):  # accepted connections inherit both: two syscalls fewer each
            self._listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.routes = dict(routes)
        self.max_connections = _room_for(max_connections)
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_request_bytes = max_request_bytes
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._public = 0  # open connections from the listener (probes are not counted)
        self._fresh: dict[int, _Conn] = {}  # clients that have sent nothing yet, oldest first
        self._ready: collections.deque[_Conn] = collections.deque()
        self._ready_probes: collections.deque[_Conn] = collections.deque()
        self._new_probes: collections.deque[socket.socket] = collections.deque()
        self._probe_lock = threading.Lock()
        self._accept_paused_until = 0.0
        self._accept_errors = 0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._published_as: str | None = None
        self.requests = 0
        self.evicted = 0  # connections closed to admit new ones when full

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def open_connections(self) -> int:
        """Open connections from clients (probes not counted)."""
        return self._public

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def listening(self) -> bool:
        """Whether the public socket is open and listening."""
        try:
            return bool(self._listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            return False

    def start(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, _LISTEN)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self._thread.start()

    def publish(self, listen: str) -> None:
        """Let the ``api`` check of this process find this server by the policy's listen address."""
        self._published_as = listen
        publish(listen, self)

    def stop(self, timeout: float = 5.0) -> None:
        if self._published_as is not None:
            unpublish(self._published_as, self)
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        for conn in list(self._conns.values()):
            self._close(conn)
        with self._probe_lock:
            while self._new_probes:
                self._new_probes.popleft().close()
        self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # --- the private probe channel ------------------------------------------------------------------

    def probe(self, path: str, timeout: float) -> http_client.Answer:
        """``GET path`` answered by this server's loop over a socket pair only this process holds.

        Raises ``OSError`` (``TimeoutError`` at the deadline, ``ConnectionError`` when the loop is not
        running or too many probes wait) or :class:`~piccolod.http_client.HttpError`.
        """
        if not self.running:
            raise ConnectionError("the API loop is not running")
        deadline = time.monotonic() + timeout
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.setblocking(False)
        with self._probe_lock:
            if len(self._new_probes) >= MAX_PROBES:
                ours.close()
                theirs.close()
                raise ConnectionError(f"{MAX_PROBES} probes are already waiting for the API loop")
            self._new_probes.append(theirs)
        self._wake()
        try:
            return http_client.exchange(ours, path, host="probe", deadline=deadline, timeout=timeout)
        finally:
            ours.close()
            with self._probe_lock:  # never picked up (the loop is stuck): do not keep it
                if theirs in self._new_probes:
                    self._new_probes.remove(theirs)
                    theirs.close()

    def _adopt_probes(self) -> None:
        with self._probe_lock:
            probes = list(self._new_probes)
            self._new_probes.clear()
        for sock in probes:
            conn = _Conn(sock, time.monotonic() + self.request_timeout, probe=True)
            self._conns[conn.fd] = conn
            self._guarded(lambda c, _m: self._read_and_answer(c), conn, 0)

    # --- the loop -----------------------------------------------------------------------------------

    def _serve(self) -> None:
        next_sweep = time.monotonic() + _SWEEP_SECONDS
        while not self._stop.is_set():
            busy = self._ready or self._ready_probes
            try:
                events = self._sel.select(0 if busy else _SWEEP_SECONDS)
            except OSError:
                if self._stop.is_set():
                    return
                raise
            turn = (len(self._ready_probes), len(self._ready))  # queued before this turn's reads
            accept = False
            for key, mask in events:
                if key.data is _LISTEN:
                    accept = True
                elif key.data is _WAKE:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                    self._adopt_probes()
                else:
                    self._guarded(self._io, key.data, mask)
            self._answer_ready(turn)
            if accept:
                self._accept()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_SECONDS
                self._sweep(now)

    def _guarded(self, step: Callable[[_Conn, int], None], conn: _Conn, mask: int) -> None:
        try:
            step(conn, mask)
        except Exception:
            log.exception("dropping a connection after an internal error")
            self._close(conn)

    def _io(self, conn: _Conn, mask: int) -> None:
        if conn.closed:
            return
        if conn.draining:
            self._drain(conn)
        elif mask & selectors.EVENT_WRITE:
            self._flush(conn)
        elif mask & selectors.EVENT_READ:
            self._read_and_answer(conn)
            return
        self._interest(conn)

    def _read_and_answer(self, conn: _Conn, *, read: bool = True) -> None:
        """Read what the client sent and, if that completes a request, answer it now (its slice of the
        turn); then watch the connection for what comes next."""
        if read:
            self._read(conn)
        waiting = self._head_end(conn) is not None or len(conn.inbuf) > self.max_request_bytes
        if waiting and not conn.closed and not conn.queued and not conn.out:
            self._answer(conn)
        self._interest(conn)

    def _answer_ready(self, turn: tuple[int, int]) -> None:
        """One slice for each connection that was waiting when the turn began: probes first, then round
        robin (those that read new requests in this turn were answered as they read them)."""
        for queue, waiting in zip((self._ready_probes, self._ready), turn, strict=True):
            for _ in range(min(waiting, len(queue))):
                conn = queue.popleft()
                conn.queued = False
                if not conn.closed:
                    self._guarded(lambda c, _m: self._answer(c), conn, 0)

    def _accept(self) -> None:
        if time.monotonic() < self._accept_paused_until:
            return
        victims: list[_Conn] | None = None
        turn_start = time.monotonic()
        # Newcomers of this turn are never evicted in it, so they may fill at most half of the table.
        for _ in range(max(1, min(ACCEPT_PER_TURN, self.max_connections // 2))):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            if self._public >= self.max_connections:
                victim = next(iter(self._fresh.values()), None)  # the one that has waited longest
                if victim is None or victim.accepted >= turn_start:
                    if victims is None:
                        victims = self._victims()
                    while victims and victims[-1].closed:
                        victims.pop()
                    victim = victims.pop() if victims else None
                if victim is None:
                    with contextlib.suppress(OSError):
                        sock.send(_error(503, "too many connections"))
                    sock.close()
                    continue
                self.evicted += 1
                self._close(victim, reset=True)
            self._adopt(sock)

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (or another accept error): pause accepting instead of spinning on it."""
        self._accept_errors += 1
        if exc.errno in _OUT_OF_DESCRIPTORS:
            self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE_SECONDS
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._listener)
        if self._accept_errors in (1, 10, 100) or self._accept_errors % 1000 == 0:
            log.warning("accept failed (%d times so far): %s", self._accept_errors, exc)

    def _adopt(self, sock: socket.socket) -> None:
        """A new client. One that sent its request and reset the connection at once (churn) is gone by
        the time a busy server accepts it: one ``getsockopt`` sees that, instead of an answer nobody
        reads. A prompt client's request is already here: it is read and answered at once."""
        try:
            gone = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            gone = 1
        if gone:
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock, time.monotonic() + self.request_timeout)
        self._conns[conn.fd] = conn
        self._public += 1
        self._guarded(self._first_read, conn, 0)

    def _first_read(self, conn: _Conn, _mask: int) -> None:
        self._read(conn)
        if not conn.closed and not conn.inbuf:
            self._fresh[conn.fd] = conn
        self._read_and_answer(conn, read=False)

    def _victims(self) -> list[_Conn]:
        """Open client connections, the next to close for a newcomer last."""

        def rank(c: _Conn) -> tuple[int, float]:
            if c.draining:
                return (-1, c.deadline)  # answered, closing
            if c.queued:
                return (4, c.accepted)  # being answered
            if c.out:
                return (1, c.accepted)  # does not read its answers
            if c.inbuf:
                return (2, c.deadline)  # a request still arriving
            if c.answered:
                return (3, c.idle_since)  # idle keep-alive
            return (0, c.accepted)  # nothing sent yet

        return sorted((c for c in self._conns.values() if not c.probe), key=rank, reverse=True)

    def _sweep(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            with contextlib.suppress(KeyError, ValueError):
                self._sel.register(self._listener, selectors.EVENT_READ, _LISTEN)
        for conn in [c for c in self._conns.values() if c.deadline <= now and not c.queued]:
            if conn.inbuf and not conn.out and not conn.draining:
                with contextlib.suppress(OSError):
                    conn.sock.send(_error(408, "request not complete in time"))
            self._close(conn)

    def _close(self, conn: _Conn, *, reset: bool = False) -> None:
        """Close ``conn``; ``reset``: abortively (an RST, no TIME_WAIT left behind for an evicted one)."""
        if conn.closed:
            return
        if reset:
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        conn.closed = True
        if self._conns.pop(conn.fd, None) is not None and not conn.probe:
            self._public -= 1
            self._fresh.pop(conn.fd, None)
        if conn.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        conn.out = []
        conn.inbuf = bytearray()

    def _interest(self, conn: _Conn) -> None:
        """Watch for what the connection waits for: the client reading (WRITE) or sending (READ)."""
        if conn.closed:
            return
        if conn.out:
            want = selectors.EVENT_WRITE
        elif conn.draining:
            want = selectors.EVENT_READ
        elif conn.queued:
            want = 0  # its buffered requests come first; the ready queue drives it
        else:
            want = selectors.EVENT_READ
        if want == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, want, conn)
        elif want == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, want, conn)
        conn.events = want

    def _queue(self, conn: _Conn) -> None:
        if not conn.queued:
            conn.queued = True
            (self._ready_probes if conn.probe else self._ready).append(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
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
            if not conn.answered:
                self._fresh.pop(conn.fd, None)
        conn.inbuf += data

    def _head_end(self, conn: _Conn) -> tuple[int, int] | None:
        """Where the first complete request head in the buffer ends, and its separator's length."""
        limit = self.max_request_bytes + 4
        crlf = conn.inbuf.find(b"\r\n\r\n", 0, limit)
        lf = conn.inbuf.find(b"\n\n", 0, limit)
        if lf >= 0 and (crlf < 0 or lf < crlf):
            return (lf, 2) if lf <= self.max_request_bytes else None
        if crlf >= 0:
            return (crlf, 4) if crlf <= self.max_request_bytes else None
        return None

    def _answer(self, conn: _Conn) -> None:
        """Answer up to REQUESTS_PER_TURN buffered requests and send what the client will take."""
        if conn.out:
            return
        segments: list[bytes | memoryview] = []
        end = self._head_end(conn)
        for _ in range(REQUESTS_PER_TURN):
            if end is None:
                if not conn.close_after and len(conn.inbuf) > self.max_request_bytes:
                    segments.append(_error(431, "request head too large"))
                    conn.close_after = True
                break
            head = bytes(conn.inbuf[: end[0]])
            del conn.inbuf[: end[0] + end[1]]
            segments += self._respond(conn, head)
            end = None if conn.close_after else self._head_end(conn)
        if segments:
            now = time.monotonic()
            conn.idle_since = now
            conn.deadline = now + self.request_timeout
            self._send(conn, segments)
        if end is not None and not conn.closed and not conn.out:
            self._queue(conn)  # more requests buffered: the next turn
        self._interest(conn)

    def _send(self, conn: _Conn, segments: list[bytes | memoryview]) -> None:
        """Send what the client takes; keep the rest (views, not copies) for when it reads again.

        Deadlines: ``request_timeout`` from the last byte the client took while answers wait for it,
        ``idle_timeout`` once everything is sent (``request_timeout`` if a partial request is buffered).
        """
        try:
            sent = conn.sock.sendmsg(segments)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        now = time.monotonic()
        if sent:
            conn.deadline = now + self.request_timeout
        while segments and sent >= len(segments[0]):
            sent -= len(segments[0])
            segments.pop(0)
        if segments:
            segments[0] = memoryview(segments[0])[sent:]  # a view: never a copy of the rest
            conn.out = segments
        elif conn.close_after:
            self._finish(conn)
        else:
            conn.out = []
            conn.deadline = now + (self.request_timeout if conn.inbuf else self.idle_timeout)

    def _finish(self, conn: _Conn) -> None:
        """The last answer is out: shut the write side and discard what the client still sends until it
        closes (at most LINGER_BYTES or LINGER_SECONDS). Closing at once with unread input would send an
        RST, which can destroy the answer before the client has read it."""
        if conn.probe:
            self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.draining = LINGER_BYTES
        conn.inbuf = bytearray()
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self._drain(conn)

    def _drain(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(min(conn.draining, 65536))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.draining -= len(data)
        if not data or conn.draining <= 0:
            self._close(conn)

    def _flush(self, conn: _Conn) -> None:
        segments, conn.out = conn.out, []
        self._send(conn, segments)
        if not conn.closed and not conn.out and self._head_end(conn) is not None:
            self._queue(conn)  # pipelined requests were waiting for this: the next turn

    # --- HTTP -------------------------------------------------------------------------------------

    def _respond(self, conn: _Conn, head: bytes) -> list[bytes]:
        """The answer to one request head: its header bytes, then the (shared) body bytes."""
        self.requests += 1
        conn.answered += 1
        try:
            method, path, keep_alive = self._parse(head)
        except _BadRequest as exc:
            conn.close_after = True
            return [_error(exc.status, str(exc))]
        if not keep_alive:
            conn.close_after = True
        if method not in ("GET", "HEAD"):
            body = error_body("read-only API: GET and HEAD only")
            head_bytes = _head(405, "application/json", len(body), keep_alive)
            return [head_bytes[:-2] + b"Allow: GET, HEAD\r\n\r\n", body]
        route = self.routes.get(path.split("?", 1)[0])
        if route is None:
            resp = Response(404, error_body("not found"))
        else:
            try:
                resp = route()
            except Exception:
                log.exception("route %r failed", path)
                resp = Response(500, error_body("internal error"))
        head_bytes = _head(resp.status, resp.content_type, len(resp.body), keep_alive)
        return [head_bytes] if method == "HEAD" else [head_bytes, resp.body]

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str, bool]:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise _BadRequest(400, "request head is not ASCII") from None
        lines = text.split("\n")
        request_line = lines[0].rstrip("\r")
        if _CONTROL.search(head) or "\t" in request_line:
            raise _BadRequest(400, "control characters in the request head")
        parts = request_line.split(" ")
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
