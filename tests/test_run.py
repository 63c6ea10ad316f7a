"""``piccolo_build.run``: signals and the environment children get (real processes, real ``env``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piccolo_build.errors import StepFailed
from piccolo_build.run import PASSTHROUGH, run, stream
from tests.builder_helpers import AT_A_TERMINAL

PROXIES = {
    "http_proxy": "http://127.0.0.1:3128",
    "https_proxy": "http://127.0.0.1:3129",
    "no_proxy": "localhost,127.0.0.1",
    "HTTP_PROXY": "http://127.0.0.1:3130",
    "HTTPS_PROXY": "http://127.0.0.1:3131",
    "NO_PROXY": "localhost,::1",
}


def test_a_child_killed_by_a_signal_is_a_step_failure_with_exit_code_128_plus_n() -> None:
    with pytest.raises(StepFailed) as e:
        run(["sh", "-c", "echo started; kill -TERM $$"])
    assert e.value.exit_code == 143
    assert e.value.message == "sh -c echo started; kill -TERM $$ was killed by signal SIGTERM (exit code 143)"


def test_without_check_the_signal_becomes_the_return_code() -> None:
    r = run(["sh", "-c", "echo started; kill -KILL $$"], check=False)
    assert (r.returncode, r.stdout) == (137, "started\n")


def test_stream_reports_a_signal_as_128_plus_n(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    assert stream(["sh", "-c", "echo started; kill -TERM $$"], log=log) == 143
    assert log.read_text() == "started\n"


# A build whose main thread cannot take SIGINT itself, so the kernel hands it to another thread: the
# main thread must still notice and stop the step (one blocking waitpid would sit out the whole step).
INTERRUPTED_ELSEWHERE = """
import signal, sys, threading, time
from pathlib import Path
from piccolo_build.run import stream
# the step inherits the blocked SIGINT through fork: it unblocks it, as any program started afresh has it
STEP = (
    "import signal, time; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "print('working', flush=True); time.sleep(60)"
)
threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
try:
    stream([sys.executable, "-c", STEP], log=Path(sys.argv[1]))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_taken_by_another_thread_still_stops_the_step(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    proc = subprocess.Popen([*AT_A_TERMINAL, sys.executable, "-c", INTERRUPTED_ELSEWHERE, str(log)])
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and "working" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the step never started"
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert time.monotonic() - sent < 5  # the step was interrupted, not killed 10 s later or waited for
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_proxy_variables_pass_through_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PROXIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PICCOLO_SECRET_TOKEN", "do-not-leak")
    monkeypatch.setenv("ALL_PROXY_NOT_LISTED", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    seen = dict(line.split("=", 1) for line in run(["env"]).stdout.splitlines())
    assert {k: seen.get(k) for k in PROXIES} == PROXIES
    assert "PICCOLO_SECRET_TOKEN" not in seen
    assert "ALL_PROXY_NOT_LISTED" not in seen
    assert "AWS_SECRET_ACCESS_KEY" not in seen
    assert set(seen) <= set(PASSTHROUGH) | {"LC_ALL", "PATH", "PWD", "SHLVL", "_"}


def test_stream_passes_proxies_to_the_child_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", PROXIES["https_proxy"])
    monkeypatch.setenv("PICCOLO_SECRET_TOKEN", "do-not-leak")
    log = tmp_path / "env.log"
    assert stream(["env"], log=log) == 0
    text = log.read_text()
    assert f"https_proxy={PROXIES['https_proxy']}\n" in text
    assert "PICCOLO_SECRET_TOKEN" not in text
