"""The live progress display of ``piccolo-build build``: the current step, its elapsed time, its log tail.

On a terminal a small block is redrawn in place (status line plus the last log lines). Elsewhere (CI
logs, pipes) it prints a line when a step starts and ends and a heartbeat line every
``heartbeat`` seconds carrying the elapsed time and the last log line, so a long SDK step never looks
hung. The full output always goes to the step's log file; this is only the view of it.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TextIO

TAIL_LINES = 3
_WIDTH = 150


def elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Thread-safe: log lines arrive from the runner's reader thread, redraws from a ticker thread."""

    def __init__(self, out: TextIO, *, total: int, tty: bool | None = None, heartbeat: float = 30.0) -> None:
        self.out = out
        self.total = total
        self.tty = out.isatty() if tty is None else tty
        self.heartbeat = heartbeat
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0
        self.step = ""
        self.index = 0
        self.started = 0.0

    def message(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.out.write(text + "\n")
            self.out.flush()

    def start(self, index: int, step: str) -> None:
        self.index, self.step, self.started = index, step, time.monotonic()
        self.tail.clear()
        self.message(f"==> [{index}/{self.total}] {step}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._thread.start()

    def line(self, text: str) -> None:
        with self._lock:
            self.tail.append(text.replace("\r", "")[:_WIDTH])

    def finish(self, status: str) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        took = time.monotonic() - self.started
        self.message(f"<== [{self.index}/{self.total}] {self.step} {status} in {elapsed(took)}")
        return took

    def _status(self) -> str:
        return f"... [{self.index}/{self.total}] {self.step} {elapsed(time.monotonic() - self.started)}"

    def _tick(self) -> None:
        interval = 0.5 if self.tty else self.heartbeat
        while not self._stop.wait(interval):
            with self._lock:
                if self.tty:
                    self._clear()
                    lines = [self._status(), *(f"    {t}" for t in self.tail)]
                    self.out.write("".join(f"\x1b[K{ln}\n" for ln in lines))
                    self._drawn = len(lines)
                else:
                    last = f" | {self.tail[-1]}" if self.tail else ""
                    self.out.write(self._status() + last + "\n")
                self.out.flush()

    def _clear(self) -> None:
        """Erase the block drawn last (terminal only); called with the lock held."""
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
