"""``exec``: run a program; its exit status is the verdict.

``command`` is an argument list whose first item is an absolute path: no shell, no search of ``PATH``.
Exit 0 passes, 1 fails, 2 is ``unknown`` (greenboot scripts and monitoring plugins use 2 for "cannot
tell"), and so is any other status or a death by a signal. A program that is not there or cannot be
executed is ``refused`` (``piccolod check`` refuses the policy for it); one still running at its
deadline is killed with its whole process group and fails.

How it runs (:func:`piccolod.run.run_check`): as the agent's own user, inside the agent unit's sandbox,
in ``/``, with nothing on stdin and a fixed environment (:data:`ENVIRONMENT` plus ``PICCOLOD_CHECK``, the
check's name), never the agent's own. Its stdout and stderr go to one pipe; the last :data:`KEEP` bytes
are kept (``details.output``, and the last line in the reason), the rest is read and dropped. When it
exits, anything it left running in its process group is killed.
"""

from __future__ import annotations

import signal
from typing import Any

from piccolod import run
from piccolod.checkspec import ExecCheck
from piccolod.policy import PolicyFile
from piccolod.result import CheckState, Outcome
from piccolod.text import one_line

ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
KEEP = 4096
PASSED, FAILED, UNKNOWN = 0, 1, 2


def _last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return f": {one_line(lines[-1], 200)}" if lines else ""


def check_exec(  # noqa: PLR0911 - one return per verdict, in the order they are judged
    name: str, spec: ExecCheck, policy: PolicyFile, timeout: float
) -> Outcome:
    program = spec.command[0]
    details: dict[str, Any] = {
        "command": list(spec.command),
        "exit_code": None,
        "signal": None,
        "output": "",
        "output_bytes": 0,
    }
    why = run.not_runnable(program)
    if why is not None:
        return Outcome(False, f"refused: {why}", details, CheckState.REFUSED)
    try:
        done = run.run_check(spec.command, timeout, {**ENVIRONMENT, "PICCOLOD_CHECK": name}, keep=KEEP)
    except OSError as exc:  # ENOEXEC (no #! line), EACCES...
        return Outcome(
            False, f"refused: cannot run {program}: {exc.strerror or exc}", details, CheckState.REFUSED
        )
    output = done.output.decode("utf-8", "replace")
    details.update(output=output, output_bytes=done.output_bytes)
    said = _last_line(output)
    if done.returncode is None:
        return Outcome(False, f"no answer within {timeout:g}s: killed with its process group{said}", details)
    if done.returncode < 0:
        details["signal"] = signal.Signals(-done.returncode).name
        return Outcome(False, f"killed by {details['signal']}{said}", details, CheckState.UNKNOWN)
    details["exit_code"] = done.returncode
    if done.returncode == PASSED:
        return Outcome(True, f"exit 0{said}", details)
    if done.returncode == FAILED:
        return Outcome(False, f"exit 1{said}", details)
    return Outcome(False, f"exit {done.returncode} (unknown: not 0 or 1){said}", details, CheckState.UNKNOWN)
