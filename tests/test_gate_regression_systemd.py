"""The regression-aware gate in the boot rig: real systemd, the real sysext, the real watcher.

Boot 1 runs the old slot (USR-A, marked) with an ``update_engine_client`` stand-in that prints what the
real client prints once an update waits for its reboot (``CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT``);
the agent's watcher sees it and writes the baseline into the journal on the state partition. The harness
then plays ``flatcar-postinst`` and GRUB, and boot 2 gates USR-B. The storage check follows the lever
(tests/fixtures/bootrig.py), so the test decides whether it passed in the baseline and whether it passes
after the update:

- it passed before and fails after: ``regression``, the gate fails and reboots, the version is pinned;
- it failed before and after, ``on_pre_existing: warn``: the slot is marked (update-engine starts), the
  gate's outcome is ``warned``; with ``fail`` the gate fails and reboots;
- no baseline (boot 1 never ran): ``inconclusive``, the gate fails closed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures.bootrig import FLATCAR_OS_RELEASE, BootRig, Report, Staged, gate_violations
from tests.fixtures.gptdisk import USR_A, USR_B, install_update, slot
from tests.fixtures.nspawn import Machine

pytestmark = [pytest.mark.slow, pytest.mark.privileged, pytest.mark.boot]

SYSTEMD = pytest.mark.parametrize("systemd", [252, 257])
# The classes are the agent's logic, the same on every systemd: the other scenarios run on 257, the
# version Flatcar ships (the watcher, the sandbox and the pin write are shown on both by the first test).
ON_257 = pytest.mark.parametrize("systemd", [257])
VERSION = re.search(r"VERSION_ID=(\S+)", FLATCAR_OS_RELEASE).group(1)  # type: ignore[union-attr]
CLIENT = f"""#!/bin/sh
# update_engine_client -status, as the real one prints it once an update waits for its reboot.
case "$1" in
-status) printf 'LAST_CHECKED_TIME=1796000000\\nPROGRESS=1.000000\\n'
  printf 'CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\\nNEW_VERSION={VERSION}\\nNEW_SIZE=456130560\\n' ;;
-reset_status) ;;
*) exit 1 ;;
esac
"""
WAIT_FOR_BASELINE = (
    "[Unit]\nDescription=wait until the agent wrote its baseline (the probe waits for this job)\n"
    "After=piccolod.service\n[Service]\nType=oneshot\nTimeoutStartSec=40\n"
    # The pattern has no quote of its own: systemd would unescape one and sh then see another pattern.
    'ExecStart=/bin/sh -c \'for i in $(seq 150); do grep -q "baseline.: {" '
    "/var/lib/piccolod/journal.json 2>/dev/null && exit 0; sleep 0.2; done; exit 1'\n"
)


def metric(r: Report, name: str, **labels: str) -> float:
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in r.data["metrics"].splitlines():
        m = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if m and want <= set((m.group(1) or "").split(",")):
            return float(m.group(2))
    raise AssertionError(f"{name}{labels} not in /metrics")


def rig_for(
    machine: Machine, disk: Path, staged: Staged, systemd: int, on_pre_existing: str, *, baseline: bool
) -> BootRig:
    rig = BootRig(
        machine,
        disk,
        staged,
        systemd,
        agent_extra="Environment=PICCOLOD_UPDATE_ENGINE_CLIENT=/srv/t/update_engine_client\n",
        on_pre_existing=on_pre_existing,
        units={"rig-wait-baseline.service": WAIT_FOR_BASELINE} if baseline else {},
    )
    machine.add_script("update_engine_client", CLIENT)
    return rig


def old_slot_with_baseline(rig: BootRig, *, healthy: bool) -> Report:
    rig.healthy(healthy)
    r = rig.boot()
    assert r.booted == USR_A
    assert "rig-wait-baseline.service: Failed with result" not in r.journal, "the baseline came late"
    base = r.data["status"]["baseline"]
    assert base is not None, r.journal[-3000:]
    assert base["slot"] == "USR-A" and base["version"] == VERSION and base["target_version"] == VERSION
    storage = next(c for c in base["checks"] if c["component"] == "storage")
    assert storage["state"] == ("passed" if healthy else "failed"), base
    return r


def classes(r: Report) -> list[tuple[str, str]]:
    return [(f["component"], f["class"]) for f in r.health["gate_failures"] or []]


@SYSTEMD
def test_a_new_failure_is_a_regression_and_rolls_back(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    rig = rig_for(machine, flatcar_disk, staged, systemd, "warn", baseline=True)
    old_slot_with_baseline(rig, healthy=True)
    install_update(flatcar_disk, USR_A)
    rig.healthy(False)
    r = rig.boot()
    assert r.booted == USR_B and r.health["startup_health_check"] == "failed"
    assert classes(r) == [("storage", "regression")]
    record = r.data["status"]["rollback_record"]
    assert record["failure_class"] == "regression"
    storage = next(c for c in record["components"] if c["component"] == "storage")
    assert storage["failure_class"] == "regression"
    assert storage["class_reason"] == f"passed in the baseline of {VERSION}, failed now"
    assert r.data["reboot_requests"] == 1 and not r.started("update-engine")
    assert metric(r, "piccolod_gate_failure_class", component="storage", **{"class": "regression"}) == 1
    assert r.data["status"]["update_pin"]["version"] == VERSION  # written by the sandboxed unit
    assert metric(r, "piccolod_update_pinned") == 1
    assert '"failure_class":"regression"' in r.journal or "storage is regression" in r.journal
    assert slot(flatcar_disk, USR_B).successful is False


@ON_257
@pytest.mark.parametrize("on_pre_existing", ["warn", "fail"])
def test_a_pre_existing_failure_warns_or_holds(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int, on_pre_existing: str
) -> None:
    rig = rig_for(machine, flatcar_disk, staged, systemd, on_pre_existing, baseline=True)
    old_slot_with_baseline(rig, healthy=False)
    install_update(flatcar_disk, USR_A)
    r = rig.boot()  # still failing
    assert r.booted == USR_B and classes(r) == [("storage", "pre_existing")]
    assert metric(r, "piccolod_gate_failure_class", component="storage", **{"class": "pre_existing"}) == 1
    if on_pre_existing == "warn":
        assert r.health["startup_health_check"] == "passed" and gate_violations(r) == []
        assert r.started("update-engine") and r.data["reboot_requests"] == 0
        assert metric(r, "piccolod_gate_outcomes_total", outcome="warned") == 1
        assert slot(flatcar_disk, USR_B).successful is True  # marked by update-engine's stand-in
        assert r.data["status"]["update_pin"] is None
    else:
        assert r.health["startup_health_check"] == "failed" and not r.started("update-engine")
        assert r.data["reboot_requests"] == 1
        assert r.data["status"]["rollback_record"]["failure_class"] == "pre_existing"
        assert metric(r, "piccolod_gate_outcomes_total", outcome="failed") == 1
        assert slot(flatcar_disk, USR_B).successful is False


@ON_257
def test_no_baseline_is_inconclusive_and_fails_closed(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    rig = rig_for(machine, flatcar_disk, staged, systemd, "warn", baseline=False)
    install_update(flatcar_disk, USR_A)
    rig.healthy(False)
    r = rig.boot()
    assert r.booted == USR_B and r.health["startup_health_check"] == "failed"
    assert classes(r) == [("storage", "inconclusive")]
    record = r.data["status"]["rollback_record"]
    assert record["failure_class"] == "inconclusive"
    assert r.data["reboot_requests"] == 1 and not r.started("update-engine")
