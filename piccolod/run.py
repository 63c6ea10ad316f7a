"""The agent's one process helper: every process piccolod starts goes through :func:`run`.

That is the TPM probe of the checks (:mod:`piccolod.checks.tpm_probe`), the reboot command of a failed
gate and ``systemctl`` (:mod:`piccolod.manager`). A child gets the environment it is given, no stdin,
and its stdout and stderr are captured; at its deadline it is killed with SIGKILL and reaped, so a hung
driver or a hung ``systemctl`` leaves neither a stuck thread nor a zombie behind. Every live child is
remembered, so :func:`kill_all` (called when the agent stops) ends the ones still running.
``tests/test_lint.py`` checks that no other module of the agent imports ``subprocess``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_live: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()


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


def run(argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> Finished:
    """Run ``argv`` with environment ``env`` for at most ``timeout`` seconds; kill it if it overruns.

    Raises :class:`ChildTimeout` when killed at the deadline, :class:`OSError` when it cannot start.
    """
    with _lock:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            close_fds=True,
        )
        _live.add(proc)
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


def kill_all() -> int:
    """SIGKILL every helper still running; returns how many there were.

    They are reaped before this returns (SIGKILL cannot be ignored; each wait is bounded anyway), and the
    threads waiting for them return at once. A helper started after this call ends itself when its
    parent is gone (the TPM probe watches for that).
    """
    with _lock:
        procs = list(_live)
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
