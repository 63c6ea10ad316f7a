"""The gate with the TPM, rollback and the real reboot: real systemd 252 and 257, a real sysext.

The boot rig (tests/fixtures/bootrig.py) boots what ``piccolo-build stage`` lays out: the base image's
guard and start unit over ``/usr``, piccolod merged from its squashfs image. Here the policy also
requires the TPM, through a real swtpm socket bound into the machine; "TPM gone" is that swtpm stopped.
The harness plays GRUB (``gptprio.next`` on the image, then the kernel command line) and
``flatcar-postinst`` (an update installed into the other slot).

The reboot command is a stand-in that logs the request, except in one scenario that keeps the policy's
default, the real ``systemctl reboot`` run by the sandboxed unit: there the machine really reboots
(``systemd-nspawn`` exits with 133, ``reboot.target`` is reached).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.bootrig import BootRig, Report, Staged, gate_violations
from tests.fixtures.daemons import Swtpm
from tests.fixtures.gptdisk import USR_A, USR_B, gptprio_next, install_update, slot
from tests.fixtures.nspawn import Machine

pytestmark = [pytest.mark.slow, pytest.mark.privileged, pytest.mark.boot]

SYSTEMD = pytest.mark.parametrize("systemd", [252, 257])


def _metric(report: Report, name: str) -> float:
    for line in report.data["metrics"].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@SYSTEMD
def test_healthy_update_with_the_tpm_is_marked_after_the_gate(
    machine: Machine, flatcar_disk: Path, staged: Staged, fresh_swtpm: Swtpm, systemd: int
) -> None:
    rig = BootRig(machine, flatcar_disk, staged, systemd, tpm=fresh_swtpm)
    rig.healthy()
    install_update(flatcar_disk, USR_A)
    r = rig.boot()
    assert r.booted == USR_B
    assert r.health["components"]["tpm"]["status"] == "healthy", r.health
    assert r.health["startup_health_check"] == "passed" and gate_violations(r) == []
    assert r.started("update-engine") and r.ue_after_ready() >= 0
    b = slot(flatcar_disk, USR_B)
    assert (b.successful, b.tries) == (True, 0)
    assert gptprio_next(flatcar_disk) == USR_B  # the next boot stays on the update
    print(f"\nsystemd {systemd}, with the TPM: READY=1 -> update-engine {r.ue_after_ready() * 1000:.0f} ms")


@SYSTEMD
def test_unhealthy_update_rolls_back_once_and_says_why(
    machine: Machine, flatcar_disk: Path, staged: Staged, fresh_swtpm: Swtpm, systemd: int
) -> None:
    rig = BootRig(machine, flatcar_disk, staged, systemd, tpm=fresh_swtpm)
    rig.healthy()
    install_update(flatcar_disk, USR_A)
    fresh_swtpm.stop()  # the TPM is gone: a required component is down
    r = rig.boot()
    assert r.booted == USR_B
    assert not r.started("update-engine"), r.unit("update-engine")
    assert r.unit("piccolod")["ActiveState"] == "active"  # the verdict given, serving the failure
    assert r.data["reboot_requests"] == 1 and r.data["token"] is None
    assert r.data["health_status"] == 503 and r.health["startup_health_check"] == "failed"
    assert r.data["status"]["last_gate"]["verdict"] == "failed"
    b = slot(flatcar_disk, USR_B)
    assert (b.successful, b.tries) == (False, 0)
    record = r.data["status"]["rollback_record"]
    assert record["slot"] == "USR-B" and record["partuuid"] == USR_B
    assert record["condition"] == "critical_component_failure" and record["reboot_requested"]
    assert record["boot_id"] == r.data["boot_id"]
    tpm = next(c for c in record["components"] if c["component"] == "tpm")
    assert not tpm["healthy"] and tpm["required"] and tpm["reason"]

    fresh_swtpm.start()  # the old slot's machine is healthy again
    r2 = rig.boot()  # the harness "reboots": GRUB skips USR-B (tries 0, not successful)
    assert r2.booted == USR_A and r2.data["boot_id"] != r.data["boot_id"]
    assert r2.unit("piccolod")["ActiveState"] == "active"
    assert r2.started("update-engine")
    h = r2.health
    assert h["update_status"] == "rolled_back", h
    assert (
        "USR-B" in (h.get("rollback_reason") or "") and "critical_component_failure" in h["rollback_reason"]
    )
    assert h["startup_health_check"] == "skipped"
    assert _metric(r2, "piccolod_rollbacks_total") == 1
    assert r2.data["reboot_requests"] == 0
    status = r2.data["status"]
    assert status["update_status"] == "rolled_back" and status["booted"]["slot"] == "USR-A"
    assert [(s["name"], s["successful"], s["booted"]) for s in status["slots"]] == [
        ("USR-A", True, True),
        ("USR-B", False, False),
    ]


@SYSTEMD
def test_real_systemctl_reboot_gets_through_the_sandbox(
    machine: Machine, flatcar_disk: Path, staged: Staged, fresh_swtpm: Swtpm, systemd: int
) -> None:
    """The policy's default reboot command, ``systemctl reboot``, run by the rendered, sandboxed unit."""
    rig = BootRig(machine, flatcar_disk, staged, systemd, tpm=fresh_swtpm, reboot="", probe=False)
    rig.healthy()
    install_update(flatcar_disk, USR_A)
    fresh_swtpm.stop()
    booted, boot = rig.start(timeout=60)
    assert booted == USR_B
    context = rig.context(boot)
    assert boot.rc == 133, f"nspawn exit status {boot.rc}, not 133 (container rebooted)" + context
    rebooting = machine.out / "rebooting"
    assert rebooting.exists(), "reboot.target was never reached" + context
    journal = (machine.out / "journal.txt").read_text()
    assert "reboot requested: systemctl reboot" in journal, journal
    assert slot(flatcar_disk, USR_B).successful is False
    print(f"\nsystemd {systemd}, real reboot: nspawn rc={boot.rc} after {boot.wall:.1f}s")
