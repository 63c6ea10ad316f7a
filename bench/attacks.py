"""Hostile local clients of the agent's HTTP API, and a well-behaved one that measures what is left.

Each attack runs in a process of its own (forked by :func:`start`) until it is stopped, always aiming at
``127.0.0.1:PORT``, and keeps itself going: connections the agent closes are opened again, and before the
agent listens it keeps trying. The four attacks (the issue's list):

- ``idle``: hold ``IDLE_CONNECTIONS`` connections open and send nothing;
- ``pipeline``: ``PIPELINE_CLIENTS`` clients pipelining ``GET /metrics`` as fast as the agent answers
  (they read everything);
- ``nonreading``: ``NONREADING_CLIENTS`` clients that send hundreds of pipelined requests and never read;
- ``churn``: connect, send a request, reset the connection at once, over and over from several threads.

:class:`Prober` is the well-behaved client: a request every ``PROBE_INTERVAL`` seconds, either on a
fresh connection each time (as ``curl`` does) or on one keep-alive connection (as a scraper does), with
every latency and error recorded.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import resource
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event

IDLE_CONNECTIONS = 1500
PIPELINE_CLIENTS = 8
NONREADING_CLIENTS = 250
CHURN_THREADS = 4
PROBE_INTERVAL = 0.02
PROBE_TIMEOUT = 5.0
HEALTH = b"GET /api/v1/system/health HTTP/1.1\r\nHost: bench\r\n\r\n"
METRICS = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n"

Attack = Callable[[int, Event], None]


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): no TIME_WAIT, so churn cannot exhaust the ephemeral ports."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def idle(port: int, stop: Event) -> None:
    """Hold IDLE_CONNECTIONS connections that never send a byte; reopen those the agent closes."""
    _raise_fd_limit(IDLE_CONNECTIONS + 64)
    sel = selectors.DefaultSelector()
    socks: set[socket.socket] = set()
    while not stop.is_set():
        opened = 0
        while len(socks) < IDLE_CONNECTIONS and opened < 200:
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                break
            sel.register(s, selectors.EVENT_READ)
            socks.add(s)
            opened += 1
        for key, _ in sel.select(0.05):
            s = key.fileobj  # type: ignore[assignment]
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed by the agent (or refused before it listened): open another
                sel.unregister(s)
                socks.discard(s)
                _reset(s)
    for s in socks:
        _reset(s)


def _pipeliner(port: int, stop: Event) -> None:
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            time.sleep(0.05)
            continue
        s.settimeout(2)
        done = threading.Event()

        def drain(sock: socket.socket = s, finished: threading.Event = done) -> None:
            try:
                while sock.recv(1 << 16):
                    pass
            except OSError:
                pass
            finished.set()

        threading.Thread(target=drain, daemon=True).start()
        try:
            while not stop.is_set() and not done.is_set():
                s.sendall(METRICS * 64)
        except OSError:
            pass
        _reset(s)
        done.wait(2)


def _in_threads(target: Attack, count: int, port: int, stop: Event) -> None:
    threads = [threading.Thread(target=target, args=(port, stop), daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pipeline(port: int, stop: Event) -> None:
    """PIPELINE_CLIENTS clients pipelining GET /metrics and reading every answer."""
    _in_threads(_pipeliner, PIPELINE_CLIENTS, port, stop)


def nonreading(port: int, stop: Event) -> None:
    """NONREADING_CLIENTS clients, each sending 500 pipelined requests and never reading an answer."""
    _raise_fd_limit(NONREADING_CLIENTS + 64)
    burst = METRICS * 500
    socks: dict[socket.socket, int] = {}  # socket -> bytes of the burst sent so far
    while not stop.is_set():
        while len(socks) < NONREADING_CLIENTS:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                s.close()
                time.sleep(0.01)
                break
            socks[s] = 0
        for s, sent in list(socks.items()):
            try:
                n = s.send(burst[sent:] if sent < len(burst) else METRICS)
                socks[s] = sent + n
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # reset by the agent, or not connected yet and refused: start again
                del socks[s]
                _reset(s)
        time.sleep(0.05)
    for s in socks:
        _reset(s)


def _churner(port: int, stop: Event) -> None:
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            time.sleep(0.01)
            continue
        with contextlib.suppress(OSError):
            s.send(HEALTH)
        _reset(s)


def churn(port: int, stop: Event) -> None:
    """CHURN_THREADS threads connecting, sending one request and resetting the connection unread."""
    threads = [
        threading.Thread(target=_churner, args=(port, stop), daemon=True) for _ in range(CHURN_THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


ATTACKS: dict[str, tuple[Attack, str]] = {
    "idle": (idle, f"{IDLE_CONNECTIONS} idle connections held"),
    "pipeline": (pipeline, f"{PIPELINE_CLIENTS} clients pipelining GET /metrics"),
    "nonreading": (nonreading, f"{NONREADING_CLIENTS} clients that send and never read"),
    "churn": (churn, f"connection churn ({CHURN_THREADS} threads: connect, send, reset)"),
}


@dataclass
class Running:
    process: multiprocessing.process.BaseProcess
    stop: Event

    def end(self) -> None:
        self.stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def start(name: str, port: int) -> Running:
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    proc = ctx.Process(target=ATTACKS[name][0], args=(port, stop), name=f"attack-{name}", daemon=True)
    proc.start()
    return Running(proc, stop)


# --- the well-behaved client ---------------------------------------------------------------------------


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP response (Content-Length framed) from ``sock``; its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return head.split(b"\r\n", 1)[0]


@dataclass
class Prober:
    """Requests the health document every PROBE_INTERVAL; ``fresh``: a new connection each time."""

    port: int
    fresh: bool
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PROBE_TIMEOUT + 2)

    def _run(self) -> None:
        sock: socket.socket | None = None
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=PROBE_TIMEOUT)
                    sock.settimeout(PROBE_TIMEOUT)
                sock.sendall(
                    HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") if self.fresh else HEALTH
                )
                status = _read_response(sock)
                if not status.startswith(b"HTTP/1.1 200"):
                    self.errors.append(status.decode(errors="replace"))
            except OSError as exc:
                self.errors.append(type(exc).__name__)
                if sock is not None:
                    sock.close()
                sock = None
            self.latencies.append(time.perf_counter() - t0)
            if self.fresh and sock is not None:
                sock.close()
                sock = None
            self._stop.wait(max(0.0, PROBE_INTERVAL - (time.perf_counter() - t0)))
        if sock is not None:
            sock.close()

    def p99(self) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("inf")
