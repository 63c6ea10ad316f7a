"""The tpm check against a real swtpm (TPM 2.0 simulator) over its unix socket TCTI.

The check runs the probe in a child process; these tests also prove what that buys: the agent never
loads tpm2-pytss, a hung TPM leaves no thread and no process behind, a crash of the probe is one failed
check.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolod import run as child
from piccolod.checks import CHECKS, timeout_for
from piccolod.checks.tpm import check_tpm, parse_tcti, vendor_text
from piccolod.policy import Checks, Component, HealthPolicy, PolicyFile, Thresholds, TpmCheck
from tests.fixtures.daemons import Swtpm, require

pytestmark = [pytest.mark.slow]


def policy(tcti: str, timeout: float = 10.0) -> PolicyFile:
    return PolicyFile(
        health_policy=HealthPolicy(
            thresholds=Thresholds(tpm_operation_timeout_seconds=timeout),
            checks=Checks(tpm=TpmCheck(tcti=tcti)),
        )
    )


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_tpm_answers_with_manufacturer_and_pcr0(swtpm: Swtpm) -> None:
    outcome = check_tpm(policy(swtpm.tcti), 5.0)
    assert outcome.healthy, outcome.reason
    assert set(outcome.details) == {"version", "manufacturer", "pcr0_sha256", "tcti"}
    assert outcome.details["version"] == "2.0"
    assert outcome.details["manufacturer"] == "IBM"  # swtpm uses libtpms, vendor ID 0x49424D00
    assert outcome.details["tcti"] == swtpm.tcti
    assert len(outcome.details["pcr0_sha256"]) == 64
    assert "IBM" in outcome.reason


def test_pcr0_matches_an_extend_done_with_tpm2_tools(fresh_swtpm: Swtpm) -> None:
    before = check_tpm(policy(fresh_swtpm.tcti), 5.0)
    assert before.details["pcr0_sha256"] == "00" * 32
    measurement = hashlib.sha256(b"piccolo test measurement").hexdigest()
    subprocess.run(
        [require("tpm2_pcrextend"), "-T", fresh_swtpm.tcti, f"0:sha256={measurement}"],
        check=True,
        capture_output=True,
    )
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(measurement)).hexdigest()
    after = check_tpm(policy(fresh_swtpm.tcti), 5.0)
    assert after.healthy, after.reason
    assert after.details["pcr0_sha256"] == expected


def test_tpm_vanishing_mid_run_fails_fast_and_recovers(fresh_swtpm: Swtpm) -> None:
    pol = policy(fresh_swtpm.tcti)
    assert check_tpm(pol, 5.0).healthy
    fresh_swtpm.stop()
    started = time.monotonic()
    gone = check_tpm(pol, 5.0)
    took = time.monotonic() - started
    assert not gone.healthy
    assert fresh_swtpm.tcti in gone.reason
    assert gone.details == {
        "version": None,
        "manufacturer": None,
        "pcr0_sha256": None,
        "tcti": fresh_swtpm.tcti,
    }
    assert took < 1.0, f"a vanished TPM took {took:.2f}s to fail"
    fresh_swtpm.start()
    assert check_tpm(pol, 5.0).healthy


@pytest.fixture
def mute_tpm(tmp_path: Path) -> Iterator[str]:
    """A TCTI whose sockets accept and never answer: a TPM that hangs mid-command."""
    # The swtpm TCTI talks to <path> (commands) and <path>.ctrl (control): both accept, neither answers.
    path = tmp_path / "mute"
    with socket.socket(socket.AF_UNIX) as mute, socket.socket(socket.AF_UNIX) as mute_ctrl:
        mute.bind(str(path))
        mute.listen(16)
        mute_ctrl.bind(f"{path}.ctrl")
        mute_ctrl.listen(16)
        yield f"swtpm:path={path}"


def test_tpm_that_never_answers_fails_by_the_deadline(mute_tpm: str) -> None:
    threads_before = threading.active_count()
    started = time.monotonic()
    outcome = check_tpm(policy(mute_tpm), 1.0)
    took = time.monotonic() - started
    assert not outcome.healthy
    assert "timed out" in outcome.reason
    assert took < 1.8, f"took {took:.2f}s with a 1s deadline"
    # The probe was killed and reaped: no process, no thread stuck in the TSS is left behind.
    assert child.running() == 0
    assert threading.active_count() == threads_before
    assert "tpm_probe" not in _children_cmdlines()


def _children_cmdlines() -> str:
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(out)


def test_a_crashing_probe_is_one_failed_check(mute_tpm: str) -> None:
    """A segfault in the TSS (simulated by SIGSEGV to the probe while it waits) fails the check only."""
    killer_done = threading.Event()

    def crash_the_probe() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for pid in child.pids():
                os.kill(pid, signal.SIGSEGV)
                killer_done.set()
                return
            time.sleep(0.005)

    killer = threading.Thread(target=crash_the_probe)
    killer.start()
    outcome = check_tpm(policy(mute_tpm), 5.0)
    killer.join(10)
    assert killer_done.is_set()
    assert not outcome.healthy
    assert "TPM probe died with SIGSEGV" in outcome.reason, outcome.reason


def test_the_agent_never_loads_tpm2_pytss(swtpm: Swtpm) -> None:
    code = (
        "import sys\n"
        "from piccolod.checks.tpm import check_tpm\n"
        "from piccolod.policy import Checks, HealthPolicy, PolicyFile, TpmCheck\n"
        f"p = PolicyFile(health_policy=HealthPolicy(checks=Checks(tpm=TpmCheck(tcti={swtpm.tcti!r}))))\n"
        "assert check_tpm(p, 5.0).healthy\n"
        "print(sorted(m for m in ('tpm2_pytss', 'cffi', 'cryptography') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_missing_tpm_is_reported_once_without_tss_log_noise(tmp_path: Path) -> None:
    outcome = check_tpm(policy(f"swtpm:path={tmp_path}/nothing-here"), 2.0)
    assert not outcome.healthy
    assert outcome.reason == f"TPM via swtpm:path={tmp_path}/nothing-here did not answer: tcti:IO failure"


def test_hundreds_of_checks_leak_no_descriptors_or_processes(swtpm: Swtpm) -> None:
    pol = policy(swtpm.tcti)
    assert check_tpm(pol, 5.0).healthy  # warm up: modules loaded, threads settled
    before = open_fds()
    for _ in range(150):  # each starts a probe process (about 0.1 s)
        assert check_tpm(pol, 5.0).healthy
    assert open_fds() == before
    assert child.running() == 0


def test_unknown_tcti_is_a_failure_not_a_crash() -> None:
    outcome = check_tpm(policy("no-such-tcti:x=1"), 2.0)
    assert not outcome.healthy
    assert "no-such-tcti:x=1" in outcome.reason


def test_registry_uses_the_tpm_deadline(swtpm: Swtpm) -> None:
    pol = policy(swtpm.tcti, timeout=7.0)
    assert timeout_for(Component.TPM, pol) == 7.0
    assert CHECKS[Component.TPM](pol, 7.0).healthy


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("device:/dev/tpmrm0", ("device", "/dev/tpmrm0")),
        ("swtpm:port=2321", ("swtpm", "port=2321")),
        ("swtpm:path=/x/sock", ("swtpm", "path=/x/sock")),
        ("swtpm", ("swtpm", None)),
        ("swtpm:", ("swtpm", None)),
        ("mssim:host=localhost,port=2321", ("mssim", "host=localhost,port=2321")),
    ],
)
def test_parse_tcti(text: str, parsed: tuple[str, str | None]) -> None:
    assert parse_tcti(text) == parsed


def test_parse_tcti_needs_a_name() -> None:
    with pytest.raises(ValueError, match="no name"):
        parse_tcti(":/dev/tpm0")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0x49424D00, "IBM"),
        (0x494E5443, "INTC"),
        (0x4D534654, "MSFT"),
        (0x322E3000, "2.0"),
        (0x53544D20, "STM"),
    ],
)
def test_vendor_text(value: int, text: str) -> None:
    assert vendor_text(value) == text
