"""The one place in piccolo_build that runs external programs (through the ``sh`` library).

argv lists only (never a shell string), ``check=True`` by default, a small sanitised environment, output
through pipes (never a pseudo-terminal, which ``sh`` would otherwise give: git would page and colour), and
a failed or missing program turned into a readable :class:`~piccolo_build.errors.PiccoloError`
(exit 127 becomes "X not found"). Everything else in piccolo_build calls :func:`run`, or :func:`stream`
for long build steps whose output is teed to a log file line by line.

The one sibling allowed to talk to a daemon is ``piccolo_build.docker_sdk`` (the Docker SDK checks the
Flatcar SDK container image); nothing else in piccolo_build spawns processes or opens sockets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piccolo_build.errors import PiccoloError, StepFailed

POLL_SECONDS = 0.1  # how often a waiting build looks at its step (and so at a Ctrl-C)
INTERRUPT_GRACE_SECONDS = 10.0  # after Ctrl-C, before the step's process group is killed

# Variables passed through to children; anything else must be given explicitly.
PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TERM",
    "TMPDIR",
    "USER",
    "GNUPGHOME",
    "DOCKER_HOST",
    "SSH_AUTH_SOCK",
    # A build host behind a proxy: git, curl and docker in the children read these (both spellings
    # are in use; run_sdk_container passes the lower-case ones on into the SDK container).
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def which(program: str, env: Mapping[str, str] | None = None) -> str | None:
    return shutil.which(program, path=(env or base_env()).get("PATH"))


def tool(program: str) -> str:
    """A Python tool of this installation (pkgcheck): on PATH, else beside the running interpreter
    (a virtual environment that is not activated)."""
    import sys

    return which(program) or str(Path(sys.executable).parent / program)


def _resolve(args: tuple[str, ...], env: Mapping[str, str], cwd: Path | None = None) -> str:
    """The program to execute; a relative path such as ``./run_sdk_container`` is relative to ``cwd``."""
    exe = which(args[0], env) if "/" not in args[0] else args[0]
    if exe is not None and "/" in args[0] and cwd is not None and not Path(exe).is_absolute():
        exe = str(cwd / exe)
    if exe is None or not Path(exe).exists():
        raise PiccoloError(f"{args[0]} not found", hint=f"install {args[0]} or put it on PATH", exit_code=127)
    return exe


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run ``argv`` to completion and capture its output.

    ``env`` is added to the sanitised base environment. With ``check``, a non-zero exit raises
    :class:`StepFailed` carrying the program's exit code and the tail of its stderr. A child killed by
    signal N has exit code 128+N (raised as :class:`StepFailed` with ``check``, returned without).
    """
    import sh

    args = tuple(str(a) for a in argv)
    full_env = base_env(env)
    exe = _resolve(args, full_env, cwd)
    try:
        proc = sh.Command(exe)(
            *args[1:],
            _cwd=str(cwd) if cwd else None,
            _env=full_env,
            _in=input,
            _ok_code=list(range(256)),
            _timeout=timeout,
            _return_cmd=True,
            _tty_out=False,
            _decode_errors="replace",
        )
    except sh.TimeoutException:
        raise StepFailed(f"{args[0]} timed out after {timeout:g}s", exit_code=124) from None
    except sh.SignalException as exc:  # killed by a signal: exit code 128+N, as a shell reports it
        signum = -int(exc.exit_code)
        result = Completed(args, 128 + signum, _text(exc.stdout), _text(exc.stderr))
        if check:
            raise StepFailed(
                f"{' '.join(args)} was killed by signal {_signame(signum)} (exit code {128 + signum})",
                exit_code=128 + signum,
            ) from None
        return result
    result = Completed(args, proc.exit_code, _text(proc.stdout), _text(proc.stderr))
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise StepFailed(
            f"{' '.join(args)} failed with exit code {result.returncode}"
            + (f": {' / '.join(tail)}" if tail else ""),
            exit_code=result.returncode,
        )
    return result


class Background:
    """A process started by :func:`spawn`."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code, or None when it still runs after ``timeout`` seconds."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; its exit code."""
        if self._proc.poll() is None:
            self._proc.terminate()
            if self.wait(grace) is None:
                self._proc.kill()
        return self._proc.wait()


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> Background:
    """Start ``argv`` in the background (a virtual machine, a TPM simulator): its own session, stdin from
    /dev/null, stdout and stderr appended to ``log``. The caller waits for it or stops it."""
    args = tuple(str(a) for a in argv)
    full_env = base_env(env)
    exe = _resolve(args, full_env)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [exe, *args[1:]], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=full_env, start_new_session=True,
        )  # fmt: skip
    return Background(proc)


def stream(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> int:
    """Run ``argv`` with stdin from /dev/null, appending stdout and stderr (merged) to ``log``.

    Each output line is also passed to ``on_line`` (for a live progress display). Returns the exit
    code (128+N when the child was killed by signal N); the caller decides what a failure means. The
    child runs in its own session; Ctrl-C is forwarded to its whole process group as SIGINT (a shell
    script only stops when its own child was interrupted too), then re-raised once the child has
    exited (SIGKILL to the group after 10 s).
    """
    import sh

    args = tuple(str(a) for a in argv)
    full_env = base_env(env)
    exe = _resolve(args, full_env, cwd)
    with log.open("a", encoding="utf-8") as out, Path(os.devnull).open(encoding="utf-8") as devnull:

        def line(text: str) -> None:
            out.write(text)
            out.flush()
            if on_line is not None:
                on_line(text.rstrip("\n"))

        proc = sh.Command(exe)(
            *args[1:],
            _cwd=str(cwd) if cwd else None,
            _env=full_env,
            _in=devnull,
            _out=line,
            _err_to_out=True,
            _bg=True,
            _bg_exc=False,
            _new_session=True,  # its own process group, so Ctrl-C reaches the whole tree below it
            _ok_code=list(range(256)),
            _return_cmd=True,
            _tty_out=False,
            _decode_errors="replace",
        )
        try:
            _wait(proc)
        except KeyboardInterrupt:
            proc.signal_group(signal.SIGINT)
            if not _wait(proc, timeout=INTERRUPT_GRACE_SECONDS):
                proc.kill_group()
                _wait(proc)
            raise
    code = int(proc.exit_code)
    return 128 - code if code < 0 else code


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _wait(proc: Any, timeout: float | None = None) -> bool:
    """Wait for a ``sh`` command, at most ``timeout`` seconds: whether it ended (a child killed by
    signal N leaves exit code -N, no exception).

    Never in one blocking ``waitpid``: a Ctrl-C that the kernel hands to one of sh's reader threads
    does not interrupt the main thread's system call, which would then see it only when the step ends.
    So the main thread polls, and runs the signal's handler within a tenth of a second. Once the child
    has ended, sh's own wait reaps nothing more and joins its reader threads, so every line is in the
    log before it is closed.
    """
    import sh

    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.is_alive():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    with contextlib.suppress(sh.SignalException):
        proc.wait()
    return True
