"""``systemd_unit`` checks and greenboot scripts on real systemd 252 and 257 (the boot rig).

The rig (tests/fixtures/bootrig.py) boots the machine as a Piccolo OS machine boots: piccolod from a real
sysext, in its rendered, sandboxed unit, gating the first boot of an update. Here its policy also
requires a unit (``systemd_unit``, asked through ``systemctl show`` from inside the sandbox) and runs a
script from ``/etc/piccolod/required.d`` (an ``exec`` check in its own process group, inside the
sandbox). A second, unsandboxed ``piccolod check --json`` runs once the test's units have settled and
reports how each of them is judged: active, failed, inactive, not found, waiting to restart, restarted
too often.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.bootrig import BootRig, Report, Staged, gate_violations
from tests.fixtures.gptdisk import USR_A, USR_B, install_update, slot
from tests.fixtures.nspawn import ENV, PY, Machine

pytestmark = [pytest.mark.slow, pytest.mark.privileged, pytest.mark.boot]

UNITS = {
    "pt-active.service": "[Service]\nExecStart=/bin/sleep infinity\n",
    "pt-failed.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    "pt-waiting.service": "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=1h\n",
    # Fails three times, then runs: restarted three times, active.
    "pt-flappy.service": "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=on-failure\nRestartSec=100ms\n"
    "ExecStart=/bin/sh -c 'n=$(cat /run/pt-flappy 2>/dev/null || echo 0); echo $((n+1)) > /run/pt-flappy; "
    '[ "$n" -ge 3 ] && exec sleep infinity; exit 1\'\n',
    # After the others have settled: how `piccolod check` judges each of them.
    "pt-check.service": "[Unit]\nAfter=pt-active.service pt-failed.service pt-waiting.service\n"
    f"After=pt-flappy.service\n[Service]\nType=oneshot\nEnvironment={ENV}\n"
    f"ExecStart=-/bin/sh -c 'sleep 2; {PY} -m piccolod check --json > /srv/out/check.json'\n",
}
CHECKS = {
    "sshd": {"kind": "systemd_unit", "unit": "pt-active.service", "max_restarts": 0},
    "failed": {"kind": "systemd_unit", "unit": "pt-failed.service"},
    "idle": {"kind": "systemd_unit", "unit": "pt-idle.service"},  # never started: inactive
    "gone": {"kind": "systemd_unit", "unit": "pt-nowhere.service"},
    "waiting": {"kind": "systemd_unit", "unit": "pt-waiting.service"},
    "flappy": {"kind": "systemd_unit", "unit": "pt-flappy.service", "max_restarts": 2},
    "flappy-ok": {"kind": "systemd_unit", "unit": "pt-flappy.service", "max_restarts": 3},
}


def rig_with_checks(
    machine: Machine, disk: Path, staged: Staged, systemd: int, script: str, *, optional: list[str]
) -> BootRig:
    def tune(policy: dict[str, Any]) -> None:
        startup = policy["health_policy"]["startup"]
        startup["required_components"] = [*startup["required_components"], "sshd"]
        startup["optional_components"] = optional
        startup["optional_all_failed"] = "degraded"
        policy["health_policy"]["checks"].update(CHECKS)

    rig = BootRig(machine, disk, staged, systemd, units=dict(UNITS), tune_policy=tune)
    m = machine
    m.add_unit("pt-idle.service", "[Service]\nExecStart=/bin/sleep infinity\n")  # never started
    required = m.root / "required.d"
    required.mkdir()
    (required / "10-app-ready").write_text(f"#!/bin/sh\necho app says hello\n{script}\n")
    (required / "10-app-ready").chmod(0o755)
    m.binds.append(f"--bind-ro={required}:/etc/piccolod/required.d")
    rig.healthy()
    return rig


def check_doc(m: Machine) -> dict[str, Any]:
    path = m.out / "check.json"
    assert path.exists(), "pt-check.service did not write its report"
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.mark.parametrize("systemd", [252, 257])
def test_a_unit_and_a_script_gate_the_update_from_inside_the_sandbox(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    rig = rig_with_checks(machine, flatcar_disk, staged, systemd, "exit 0", optional=list(CHECKS)[1:])
    install_update(flatcar_disk, USR_A)
    r: Report = rig.boot()
    assert r.booted == USR_B
    checks = r.health["checks"]
    assert checks["sshd"]["state"] == "passed", checks["sshd"]
    assert checks["sshd"]["reason"] == "pt-active.service is active (running)"
    assert checks["10-app-ready"]["state"] == "passed" and checks["10-app-ready"]["required"] is True
    assert r.health["components"]["10-app-ready"]["details"]["output"] == "app says hello\n"
    assert r.health["startup_health_check"] == "passed" and gate_violations(r) == []
    assert slot(flatcar_disk, USR_B).successful

    judged = {name: (c["state"], c["reason"]) for name, c in check_doc(machine)["checks"].items()}
    assert judged["sshd"] == ("passed", "pt-active.service is active (running)")
    assert judged["failed"] == ("failed", "pt-failed.service is failed (failed, result exit-code)")
    assert judged["idle"] == ("failed", "pt-idle.service is inactive (dead)")
    assert judged["gone"] == ("failed", "pt-nowhere.service is not loaded (not-found)")
    assert judged["waiting"] == ("unknown", "pt-waiting.service is still activating (auto-restart)")
    assert judged["flappy"] == ("failed", "pt-flappy.service was restarted 3 times, more than 2")
    assert judged["flappy-ok"] == ("passed", "pt-flappy.service is active (running)")


def test_a_failing_required_script_rolls_the_update_back(
    machine: Machine, flatcar_disk: Path, staged: Staged
) -> None:
    rig = rig_with_checks(
        machine, flatcar_disk, staged, 257, "echo >&2 'db migration pending'; exit 1", optional=[]
    )
    install_update(flatcar_disk, USR_A)
    r = rig.boot()
    assert r.booted == USR_B
    assert r.health["startup_health_check"] == "failed" and not r.started("update-engine")
    assert r.data["reboot_requests"] == 1
    record = r.data["status"]["rollback_record"]
    assert record["reason"] == "required components failing: 10-app-ready"
    script = next(c for c in record["components"] if c["component"] == "10-app-ready")
    assert script == {
        "component": "10-app-ready", "healthy": False, "required": True,
        "reason": "exit 1: db migration pending", "duration_seconds": script["duration_seconds"],
        "state": "failed",
    }  # fmt: skip
    assert not slot(flatcar_disk, USR_B).successful
