"""The agent's one process helper: every process piccolod starts goes through :func:`run`.

That is the TPM probe of the checks (:mod:`piccolod.checks.tpm_probe`), the reboot command of a failed
gate, ``systemctl`` (:mod:`piccolod.manager`, the ``systemd_unit`` checks) and the programs of ``exec``
checks. A child gets the environment it is given, no stdin, and its stdout and stderr are captured; at
its deadline it is killed with SIGKILL and reaped, so a hung driver or a hung ``systemctl`` leaves neither
a stuck thread nor a zombie behind. Every live child is remembered, so :func:`kill_all` (called when the
agent stops) ends the ones still running.

A check's program (:func:`run_check`) is not trusted to behave: it runs in a session and process group of
its own, in ``/``, with its stdout and stderr on one pipe of which only the last ``keep`` bytes are kept
(the rest is read and dropped, so a program that writes without end neither blocks nor fills memory), and
its whole process group is killed with SIGKILL at the deadline, and also when the program itself exits
(what it left running in its group goes with it). A program that started a session of its own escapes
the group; it is not the agent's to hunt down (the unit's cgroup ends it when the agent stops).
``tests/test_lint.py`` checks that no other module of the agent imports ``subprocess``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_live: set[subprocess.Popen[bytes]] = set()
_groups: set[int] = set()  # process groups of check programs still running
_lock = threading.Lock()
_READ = 64 * 1024
_EXIT_POLL_SECONDS = 0.05  # how often a program whose output pipe stays open is asked whether it exited
_DRAIN_READS = 16  # after the program exits: at most this many reads of what is still in the pipe
_GROUP_GONE_SECONDS = 0.5  # how long a killed group may take to disappear before the check returns


@dataclass(frozen=True)
class Finished:
    """A child that exited on its own: exit status (negative: killed by that signal) and its output."""

    returncode: int
    stdout: bytes
    stderr: bytes


class ChildTimeout(TimeoutError):
    """The child did not exit within its deadline and was killed; ``stderr`` is what it wrote so far."""

    def __init__(self, seconds: float, stderr: bytes) -> None:
        super().__init__(f"timed out after {seconds:g}s")
        self.stderr = stderr


def _start(argv: Sequence[str], env: Mapping[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a child (no stdin, stdout piped) and remember it, with its process group when it has one
    of its own, so that :func:`kill_all` finds it."""
    with _lock:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=dict(env),
            close_fds=True,
            **popen,
        )
        _live.add(proc)
        if popen.get("start_new_session"):
            _groups.add(proc.pid)
    return proc


def run(argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> Finished:
    """Run ``argv`` with environment ``env`` for at most ``timeout`` seconds; kill it if it overruns.

    Raises :class:`ChildTimeout` when killed at the deadline, :class:`OSError` when it cannot start.
    """
    proc = _start(argv, env, stderr=subprocess.PIPE)
    try:
        try:
            out, err = proc.communicate(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise ChildTimeout(timeout, err or b"") from None
        return Finished(proc.returncode, out or b"", err or b"")
    finally:
        if proc.poll() is None:  # an exception in communicate() itself: do not leave it running
            proc.kill()
            proc.wait()
        with _lock:
            _live.discard(proc)


@dataclass(frozen=True)
class Captured:
    """A check program's run: exit status (negative: that signal; None: killed at the deadline), the
    last bytes it wrote to stdout and stderr, and how many it wrote in all."""

    returncode: int | None
    output: bytes
    output_bytes: int

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (its process group cannot be reused meanwhile)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _gone(pgid: int, within: float = _GROUP_GONE_SECONDS) -> None:
    """Wait (bounded) until process group ``pgid`` is empty: SIGKILL takes effect when each member is
    next scheduled, and the orphans are reaped by PID 1."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.005)


class _Tail:
    """The last ``keep`` bytes a non-blocking pipe delivers, and how many it delivered in all."""

    def __init__(self, fd: int, keep: int) -> None:
        self.fd = fd
        self.keep = keep
        self.data = bytearray()
        self.total = 0

    def take(self, reads: int) -> bool:
        """Read what the pipe holds, at most ``reads`` times; False at the end of the output."""
        for _ in range(reads):
            try:
                chunk = os.read(self.fd, _READ)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self.total += len(chunk)
            self.data = (self.data + chunk)[-self.keep :] if self.keep else self.data
        return True


def _follow(pid: int, tail: _Tail, deadline: float) -> bool:
    """Read the program's output until it exits or ``deadline`` passes; True if it is still running."""
    with selectors.DefaultSelector() as sel:
        sel.register(tail.fd, selectors.EVENT_READ)
        open_pipe = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return not _exited(pid)
            if _exited(pid):
                if open_pipe:
                    tail.take(_DRAIN_READS)
                return False
            if not open_pipe:  # it closed its output and runs on: wait, a poll at a time
                time.sleep(min(left, _EXIT_POLL_SECONDS))
            elif sel.select(min(left, _EXIT_POLL_SECONDS)):
                open_pipe = tail.take(1)


def run_check(argv: Sequence[str], timeout: float, env: Mapping[str, str], *, keep: int = 4096) -> Captured:
    """Run a check's program for at most ``timeout`` seconds (see the module's docstring).

    Raises :class:`OSError` when it cannot start (ENOEXEC: no ``#!`` line, EACCES...).
    """
    proc = _start(argv, env, stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    tail = _Tail(proc.stdout.fileno(), keep)
    try:
        timed_out = _follow(proc.pid, tail, time.monotonic() + max(timeout, 0.0))
        _kill_group(proc.pid)  # the program's leftovers, or all of it at the deadline
        proc.wait()
        _gone(proc.pid)
    finally:
        if proc.poll() is None:
            _kill_group(proc.pid)
            proc.kill()
            proc.wait()
        proc.stdout.close()
        with _lock:
            _live.discard(proc)
            _groups.discard(proc.pid)
    return Captured(None if timed_out else proc.returncode, bytes(tail.data), tail.total)


def kill_all() -> int:
    """SIGKILL every helper still running; returns how many there were.

    They are reaped before this returns (SIGKILL cannot be ignored; each wait is bounded anyway), and the
    threads waiting for them return at once. A helper started after this call ends itself when its
    parent is gone (the TPM probe watches for that).
    """
    with _lock:
        procs = list(_live)
        groups = list(_groups)
    for pgid in groups:
        _kill_group(pgid)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
    for proc in procs:  # reap them here too: the agent may exit before the waiting threads run again
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            proc.wait(1.0)
    return len(procs)


def running() -> int:
    """How many helper processes are alive now (for tests)."""
    return len(pids())


def pids() -> list[int]:
    """The process IDs of the helpers alive now."""
    with _lock:
        return [p.pid for p in _live if p.poll() is None]


def not_runnable(path: str) -> str | None:
    """Why the program at ``path`` cannot be run (None: it is a regular file this process may execute)."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        return f"{path}: {(exc.strerror or str(exc)).lower()}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable (chmod +x, and start it with a #! line)"
    return None


def base_env(**extra: str) -> dict[str, str]:
    """A small environment for a helper: the agent's PATH, locale and Python settings, plus ``extra``."""
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "PYTHONHOME", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(extra)
    return env


def python_env(**extra: str) -> dict[str, str]:
    """:func:`base_env` for a child that runs the agent's own interpreter (the TPM probe): it also keeps
    the agent's ``LD_LIBRARY_PATH``, which that interpreter may need. Other programs (``systemctl``) get
    :func:`base_env`: the agent's library path is not theirs."""
    env = base_env(**extra)
    if "LD_LIBRARY_PATH" in os.environ:
        env.setdefault("LD_LIBRARY_PATH", os.environ["LD_LIBRARY_PATH"])
    return env
