"""Hostile configuration files and a way to measure what a real process spends on one.

Shared by the regression tests (``tests/test_hostile_input.py``, which hold the contract: one line,
the documented exit code, under 2 s of CPU and 200 MB) and ``bench/inputs.py`` (which prints the
figures). Every case is a file that once hung, exploded or crashed a reader, or one built to try.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LIMIT_SECONDS = 2.0
LIMIT_BYTES = 200 * 1024 * 1024


def alias_bomb() -> str:
    """About 300 bytes; expanded, 9**9 (387 million) scalars: PyYAML's own loader ran past 60 s and
    2 GB on it."""
    names = "abcdefghi"
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    lines += [f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in itertools.pairwise(names)]
    return "\n".join(lines) + "\n"


# name -> file content (bytes: some are not text). Each is a policy as much as a piccolo.yaml: the
# readers must refuse it before they know which model it is for.
CASES: dict[str, bytes] = {
    "alias-bomb": alias_bomb().encode(),
    "recursive-alias": b"health_policy: &a\n  startup: *a\n",
    "bool-maybe": b"health_policy:\n  rollback:\n    enable_automatic: !!bool maybe\n",
    "5000-digit-integer": b"health_policy:\n  runtime:\n    failure_threshold: " + b"9" * 5000 + b"\n",
    "deep-flow-nesting": b"health_policy: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "deep-block-nesting": b"".join(b"  " * i + b"k:\n" for i in range(5000)),
    "python-tag": b"agent: !!python/object/apply:os.system [echo pwned]\n",
    "merge-key": b"base: {listen: '127.0.0.1:1'}\nagent:\n  <<: {listen: '127.0.0.1:2'}\n",
    "newline-and-ansi-in-key": b'"\\e[31mred\\nsecond line": 1\n',
    "not-utf-8": b"agent:\n  listen: \xff\xfe\n",
    "control-character": b"agent:\n  listen: \x1b[2J127.0.0.1:80\n",
    "many-keys": b"".join(b"k%d: %d\n" % (i, i) for i in range(20_000)),
    "huge-file": b"# " + b"x" * (8 * 1024 * 1024) + b"\n",
    "long-string": b"agent:\n  listen: '" + b"1" * 200_000 + b"'\n",
    "two-documents": b"agent: {}\n---\nagent: {}\n",
}


@dataclass(frozen=True)
class Measured:
    returncode: int  # -9: killed at the timeout
    stdout: str
    stderr: str
    cpu_seconds: float
    wall_seconds: float
    peak_rss_bytes: int


# Runs the measured program as its child and reports the child's own rusage. Linux carries a process's
# peak RSS across fork and exec, so a program started straight from a big test process would report at
# least that process's size; started from this small launcher, it reports its own.
_LAUNCHER = """
import os, signal, sys, time
report, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
deadline = time.monotonic() + timeout
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        break
    time.sleep(0.02)
with open(report, "w") as out:
    print(os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, usage.ru_maxrss, file=out)
"""


def measure(argv: list[str], *, timeout: float = 60.0, cwd: Path | None = None) -> Measured:
    """Run ``argv`` (killed after ``timeout`` seconds) and report its exit code, output, CPU time and
    peak resident memory, from the kernel's accounting of that one process (``wait4``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICCOLO_")}
    with tempfile.TemporaryDirectory() as tmp:
        report, out, err = Path(tmp) / "report", Path(tmp) / "out", Path(tmp) / "err"
        start = time.monotonic()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(report), str(timeout), *argv],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                check=True,
                timeout=timeout + 30,
            )
        wall = time.monotonic() - start
        code, cpu, rss_kib = report.read_text().split()
        return Measured(
            returncode=int(code),
            stdout=out.read_text(encoding="utf-8", errors="replace"),
            stderr=err.read_text(encoding="utf-8", errors="replace"),
            cpu_seconds=float(cpu),
            wall_seconds=wall,
            peak_rss_bytes=int(rss_kib) * 1024,
        )


BUILDER = [sys.executable, "-m", "piccolo_build"]
AGENT = [sys.executable, "-m", "piccolod"]


def validate(path: Path) -> list[str]:
    """``piccolo-build config validate FILE``: exit 2, ``error:`` and ``hint:`` lines."""
    return [*BUILDER, "config", "validate", str(path)]


def check(path: Path) -> list[str]:
    """``piccolod check --config FILE``: exit 3 (could not assess), one ``piccolod:`` line."""
    return [*AGENT, "check", "--config", str(path)]
