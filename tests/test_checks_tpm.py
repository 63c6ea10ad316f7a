"""The tpm check against a real swtpm (TPM 2.0 simulator) over its unix socket TCTI."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from pathlib import Path

import pytest

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


def test_tpm_that_never_answers_fails_by_the_deadline(tmp_path: Path) -> None:
    # The swtpm TCTI talks to <path> (commands) and <path>.ctrl (control): both accept, neither answers.
    path = tmp_path / "mute"
    with socket.socket(socket.AF_UNIX) as mute, socket.socket(socket.AF_UNIX) as mute_ctrl:
        mute.bind(str(path))
        mute.listen(16)
        mute_ctrl.bind(f"{path}.ctrl")
        mute_ctrl.listen(16)
        started = time.monotonic()
        outcome = check_tpm(policy(f"swtpm:path={path}"), 1.0)
        took = time.monotonic() - started
    assert not outcome.healthy
    assert "timed out" in outcome.reason
    assert took < 1.8, f"took {took:.2f}s with a 1s deadline"


def test_thousands_of_checks_leak_no_descriptors(swtpm: Swtpm) -> None:
    pol = policy(swtpm.tcti)
    assert check_tpm(pol, 5.0).healthy  # warm up: libraries loaded, threads settled
    before = open_fds()
    for _ in range(1000):
        assert check_tpm(pol, 5.0).healthy
    assert open_fds() == before


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
