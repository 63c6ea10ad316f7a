"""``exec`` checks and greenboot's directories against real programs: exit codes, output that never
ends, children that outlive their parent, hangs, a bounded environment, and the gate's parallel run.

Every program here is a real file under the test's directory, run by the agent's process helper. Process
groups are read from ``/proc`` to show that nothing a check started outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolod.assess import Assessor
from piccolod.checks.kinds.exec import ENVIRONMENT, KEEP, check_exec
from piccolod.checkspec import ExecCheck, Phase
from piccolod.policy import PolicyFile, load_policy
from piccolod.result import CheckState, Outcome

PICCOLOD = [sys.executable, "-m", "piccolod"]
POLICY = PolicyFile()


def program(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def run(path: Path, *args: str, timeout: float = 5.0, name: str = "probe") -> tuple[Outcome, float]:
    started = time.monotonic()
    out = check_exec(name, ExecCheck(command=(str(path), *args)), POLICY, timeout)
    return out, time.monotonic() - started


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """PIDs a test expects to be gone; killed afterwards if a failure left them."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("body", "healthy", "state", "reason"),
    [
        ("echo all good; exit 0", True, None, "exit 0: all good"),
        ("echo >&2 ingest lagging; exit 1", False, None, "exit 1: ingest lagging"),
        ("echo cannot tell; exit 2", False, CheckState.UNKNOWN, "exit 2 (unknown: not 0 or 1): cannot tell"),
        ("exit 7", False, CheckState.UNKNOWN, "exit 7 (unknown: not 0 or 1)"),
        ("echo dying; kill -TERM $$", False, CheckState.UNKNOWN, "killed by SIGTERM: dying"),
    ],
    ids=["0-passes", "1-fails", "2-unknown", "7-unknown", "signal-unknown"],
)
def test_the_exit_status_is_the_verdict(
    tmp_path: Path, body: str, healthy: bool, state: CheckState | None, reason: str
) -> None:
    out, took = run(program(tmp_path / "check", body))
    assert (out.healthy, out.state, out.reason) == (healthy, state, reason)
    assert took < 2.0


def test_output_is_kept_bounded_and_the_rest_drained(tmp_path: Path) -> None:
    """20 MB of output: the check neither blocks on a full pipe nor keeps more than 4 KiB."""
    spew = program(tmp_path / "spew", "head -c 20000000 /dev/zero | tr '\\0' y; echo; echo the end; exit 1")
    out, _ = run(spew, timeout=20)
    assert not out.healthy and out.reason == "exit 1: the end"
    assert out.details["output_bytes"] == 20_000_009
    assert len(out.details["output"].encode()) == KEEP
    assert out.details["output"].endswith("yyy\nthe end\n")


def test_a_hung_program_is_killed_with_its_whole_group_at_the_deadline(
    tmp_path: Path, leftovers: list[int]
) -> None:
    pids = tmp_path / "pids"
    children = f"sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}"
    hang = program(tmp_path / "hang", f"echo $$ > {pids}; {children}; echo waiting; sleep 300")
    out, took = run(hang, timeout=0.5)
    started = [int(p) for p in pids.read_text().split()]
    leftovers.extend(started)
    assert (out.healthy, out.state) == (False, None)
    assert out.reason == "no answer within 0.5s: killed with its process group: waiting"
    assert 0.5 <= took < 1.5
    assert group_members(started[0]) == []
    assert not any(alive(pid) for pid in started)


def test_what_a_program_leaves_running_is_killed_when_it_exits(tmp_path: Path, leftovers: list[int]) -> None:
    """A child that keeps the output pipe open does not hold the check up either."""
    pids = tmp_path / "pids"
    fork = program(tmp_path / "fork", f"echo $$ > {pids}; (sleep 300) & echo $! >> {pids}; exit 0")
    out, took = run(fork, timeout=10)
    started = [int(p) for p in pids.read_text().split()]
    leftovers.extend(started)
    assert out.healthy and out.reason == "exit 0"
    assert took < 1.0, f"held up {took:.2f}s by a child holding the pipe"
    assert group_members(started[0]) == [] and not alive(started[1])


def test_the_environment_is_fixed_and_the_agents_own_stays_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PICCOLOD_TEST_SECRET", "must-not-leak")
    out, _ = run(Path("/usr/bin/env"), name="envcheck")
    assert out.healthy, out.reason
    assert sorted(out.details["output"].splitlines()) == sorted(
        [*(f"{k}={v}" for k, v in ENVIRONMENT.items()), "PICCOLOD_CHECK=envcheck"]
    )


def test_it_runs_in_the_root_directory_with_nothing_on_stdin(tmp_path: Path) -> None:
    where = program(tmp_path / "where", "pwd; cat; echo read-all; exit 0")
    out, _ = run(where, timeout=3)
    assert out.healthy and out.details["output"] == "/\nread-all\n"
    assert out.details["command"] == [str(where)] and out.details["exit_code"] == 0


@pytest.mark.parametrize("case", ["not-executable", "no-shebang", "directory", "missing"])
def test_a_program_that_cannot_run_is_refused(tmp_path: Path, case: str) -> None:
    path = tmp_path / "prog"
    if case == "not-executable":
        program(path, "exit 0", 0o644)
        words = "is not executable"
    elif case == "no-shebang":
        path.write_bytes(b"\x7fELF-not-really\n")
        path.chmod(0o755)
        words = "refused: cannot run"
    elif case == "directory":
        path.mkdir()
        words = "is not a regular file"
    else:
        words = "no such file or directory"
    out, _ = run(path)
    assert (out.healthy, out.state) == (False, CheckState.REFUSED)
    assert out.reason.startswith("refused: ") and words in out.reason, out.reason


# --- greenboot's directories, through the engine and the real command ----------------------------------


def greenboot(tmp_path: Path, required: dict[str, str], wanted: dict[str, str] | None = None) -> Path:
    for name, body in required.items():
        program(tmp_path / "required.d" / name, body)
    for name, body in (wanted or {}).items():
        program(tmp_path / "wanted.d" / name, body)
    policy = tmp_path / "health-policy.yaml"
    policy.write_text("health_policy:\n  startup: {required_components: [], optional_components: []}\n")
    return policy


def test_required_and_wanted_scripts_run_in_parallel_and_weigh_as_their_directory(tmp_path: Path) -> None:
    required = {f"{i:02d}-slow": "sleep 1; exit 0" for i in range(8)}
    policy = greenboot(tmp_path, required, {"50-flaky": "echo flaky; exit 1"})
    started = time.monotonic()
    argv = [*PICCOLOD, "check", "--config", str(policy)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    took = time.monotonic() - started
    assert r.returncode == 2, r.stdout + r.stderr  # every optional check failing: unhealthy
    lines = r.stdout.splitlines()
    assert lines[0].startswith("status: unhealthy")
    assert sum(" healthy required " in line for line in lines) == 8
    assert any(
        "50-flaky" in line and "FAILED  optional" in line and "exit 1: flaky" in line for line in lines
    )
    assert took < 4.5, f"eight 1 s scripts took {took:.1f}s: not run in parallel"


def test_the_gate_stops_waiting_at_the_first_required_failure(tmp_path: Path) -> None:
    """A fast failure cancels the wait for a slow script; the next attempt picks the slow one up."""
    marker = tmp_path / "slow-done"
    policy = load_policy(
        greenboot(tmp_path, {"fast-fails": "exit 1", "slow": f"sleep 1.5; touch {marker}; exit 0"})
    )
    assessor = Assessor()
    started = time.monotonic()
    first = assessor.assess(policy, phase=Phase.GATE, stop_on_required_failure=True)
    took = time.monotonic() - started
    states = {r.component: r.state for r in first.results}
    assert states == {"fast-fails": CheckState.FAILED, "slow": CheckState.CANCELLED}
    assert took < 1.0, f"waited {took:.2f}s for a slow check after a required failure"
    slow = first.result("slow")
    assert slow is not None and "the required check 'fast-fails' failed" in slow.reason
    second = assessor.assess(policy, phase=Phase.GATE, stop_on_required_failure=False)
    assert {r.component: r.state for r in second.results} == {
        "fast-fails": CheckState.FAILED,
        "slow": CheckState.PASSED,
    }
    assert marker.exists()  # the cancelled run was left to finish, and its answer used


def test_an_unknown_answer_does_not_stop_the_gate(tmp_path: Path) -> None:
    policy = load_policy(greenboot(tmp_path, {"unsure": "exit 2", "slow": "sleep 0.5; exit 0"}))
    a = Assessor().assess(policy, phase=Phase.GATE, stop_on_required_failure=True)
    assert {r.component: r.state for r in a.results} == {
        "slow": CheckState.PASSED,
        "unsure": CheckState.UNKNOWN,
    }
    assert a.status == "unhealthy"  # a required check that cannot tell does not pass


def test_a_refused_script_is_shown_and_counts_against_the_machine(tmp_path: Path) -> None:
    """``serve`` loads the policy without the lint: the check is there, refused, required."""
    policy_path = greenboot(tmp_path, {"10-ok": "exit 0"})
    (tmp_path / "required.d" / "20-notes").write_text("no program\n")
    policy = load_policy(policy_path, lint=False)
    a = Assessor().assess(policy)
    assert {r.component: (r.state, r.required) for r in a.results} == {
        "10-ok": (CheckState.PASSED, True),
        "20-notes": (CheckState.REFUSED, True),
    }
    assert a.status == "unhealthy"


def test_serve_runs_a_refused_script_and_shows_it(tmp_path: Path) -> None:
    """``piccolod serve`` (a real process) does not refuse the policy for a script it cannot run: it
    runs the check as refused, which the health document and the metrics show. (In the gate, the refusal
    also stops the wait for the other script: cancelled; at runtime every check is waited for.)"""
    import json as json_

    from tests.agent_helpers import free_port, get, wait_for
    from tests.test_metrics import value

    port = free_port()
    policy = greenboot(tmp_path, {"10-ok": "exit 0"})
    (tmp_path / "required.d" / "20-notes").write_text("no program\n")
    policy.write_text(
        "health_policy:\n"
        "  startup: {timeout_seconds: 0.5, required_components: [], optional_components: []}\n"
        "  runtime: {check_interval_seconds: 0.5}\n"
        f"agent: {{listen: '127.0.0.1:{port}', state_dir: '{tmp_path / 'state'}', "
        f"boot: {{cmdline: '{tmp_path / 'no-cmdline'}'}}}}\n"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe nobody reads while the agent logs every check
        proc = subprocess.Popen(
            [*PICCOLOD, "serve", "--config", str(policy)], stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def runtime() -> bool:  # the gate (an unknown slot: fail closed) is over, a runtime run is in
            try:
                doc = json_.loads(get(port, "/api/v1/system/health", timeout=1)[2])
            except (OSError, ValueError):
                return False
            return bool(doc["checks"]["10-ok"]["state"] == "passed")

        wait_for(runtime, timeout=20, what="a runtime assessment")
        doc = json_.loads(get(port, "/api/v1/system/health")[2])
        metrics = get(port, "/metrics")[2].decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text(errors="replace")[-2000:]
    notes = doc["checks"]["20-notes"]
    assert (notes["state"], notes["required"]) == ("refused", True)
    script = tmp_path / "required.d" / "20-notes"
    assert notes["reason"] == f"refused: {script} is not executable (chmod +x, and start it with a #! line)"
    assert doc["checks"]["10-ok"]["state"] == "passed" and doc["status"] == "unhealthy"
    assert value(metrics, "piccolod_check_state", component="20-notes", state="refused") == 1
