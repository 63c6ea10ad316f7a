"""Run blocking probes side by side and stop waiting for them at a deadline.

Some calls a check makes cannot be given a timeout of their own (``getaddrinfo``, ``statvfs`` on a dead
network file system, an HTTP response that trickles in). Each probe runs in its own daemon thread; the
caller gets every result that arrived before the deadline and a :class:`TimeoutError` for the rest. A
probe that never returns leaves one idle daemon thread behind, never a blocked check or a blocked exit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def _start(job: Callable[[], V], name: str) -> Future[V]:
    future: Future[V] = Future()

    def run() -> None:
        try:
            future.set_result(job())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def race(jobs: Mapping[K, Callable[[], V]], timeout: float) -> dict[K, V | BaseException]:
    """Run ``jobs`` concurrently; return each one's value or exception, ``TimeoutError`` if unfinished."""
    futures = {key: _start(job, f"piccolod-probe-{key}") for key, job in jobs.items()}
    wait(futures.values(), timeout=max(timeout, 0.0))
    out: dict[K, V | BaseException] = {}
    for key, future in futures.items():
        if not future.done():
            out[key] = TimeoutError(f"timed out after {timeout:g}s")
            continue
        exc = future.exception()
        out[key] = exc if exc is not None else future.result()
    return out


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), never below a millisecond."""
    return max(deadline - time.monotonic(), 0.001)
