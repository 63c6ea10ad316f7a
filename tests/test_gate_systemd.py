"""The first-boot gate for real: systemd as PID 1, the rendered units, a GPT image, the real agent.

Each test boots a machine (tests/fixtures/nspawn.py) with the units ``piccolo-build render`` wrote into
``overlays/`` (piccolod.service, its ``Upholds=`` drop-in on multi-user.target, update-engine's
``Requires=``/``After=`` drop-in) and a stand-in update-engine.service that marks the booted slot like
``flatcar-setgoodroot``. The harness plays GRUB (``gptprio.next`` on the image, then the kernel command
line) and ``flatcar-postinst`` (an update installed into the other slot). The agent's checks are local:
``storage``, ``api`` and the TPM through a real swtpm socket bound into the machine; "TPM gone" is
that swtpm stopped. The test drop-in only points ``ExecStart=`` at this checkout's Python.

The reboot command is a stand-in that logs the request, except in one scenario that keeps the policy's
default, the real ``systemctl reboot`` run by the sandboxed unit: there the machine really reboots
(``systemd-nspawn`` exits with 133, ``reboot.target`` is reached).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from piccolod.gpt import read_table
from tests.fixtures.daemons import Swtpm
from tests.fixtures.gptdisk import USR_A, USR_B, cmdline_for, gptprio_next, install_update, slot
from tests.fixtures.nspawn import MACHINE_ROOT, PY, ROOT, SITE_PACKAGES, Boot, Machine, pids_in

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

FILES = ROOT / "overlays" / "coreos-overlay"
UNIT = FILES / "app-admin" / "piccolod" / "files" / "piccolod.service"
UPHOLDS = FILES / "app-admin" / "piccolod" / "files" / "10-piccolod.conf"
UE_DROPIN = FILES / "coreos-base" / "piccolo-base" / "files" / "10-piccolod-dependency.conf"
DEADLINE = 4.0
GRACE = 1.0
ENV = f"PYTHONPATH={MACHINE_ROOT}:{SITE_PACKAGES} LD_LIBRARY_PATH=/opt/python/lib PYTHONDONTWRITEBYTECODE=1"


STAND_IN_REBOOT = "reboot_command: [/opt/t/reboot]"


def policy_yaml(reboot: str = STAND_IN_REBOOT) -> str:
    """The test policy; ``reboot`` is its reboot line ("" keeps the default, ``systemctl reboot``)."""
    return f"""\
health_policy:
  startup:
    timeout_seconds: {DEADLINE}
    required_components: [tpm, storage, api]
    optional_components: []
  rollback:
    reboot_grace_seconds: {GRACE}
    {reboot}
  thresholds: {{tpm_operation_timeout_seconds: 2}}
  checks:
    tpm: {{tcti: "swtpm:path=/opt/tpm/sock"}}
    storage: {{mounts: [/var/lib/piccolod]}}
agent:
  boot: {{cmdline: /opt/t/cmdline, disk: /opt/disk/disk.img}}
"""


@dataclass
class Report:
    """What probe.json says about one boot, with helpers the assertions read well with."""

    data: dict[str, Any]
    booted: str
    wall: float

    def unit(self, name: str) -> dict[str, str]:
        u: dict[str, str] = self.data["units"][f"{name}.service"]
        return u

    def started(self, name: str) -> bool:
        return int(self.unit(name)["ExecMainStartTimestampMonotonic"]) > 0

    @property
    def health(self) -> dict[str, Any]:
        h: dict[str, Any] = self.data["health"]
        return h


class Rig:
    """One machine with its disk, TPM and units; :meth:`boot` plays GRUB and boots once."""

    def __init__(
        self,
        machine: Machine,
        disk: Path,
        tpm: Swtpm,
        *,
        unit_extra: str = "",
        ue_dropin: bytes | None = None,
        reboot: str = STAND_IN_REBOOT,
        probe: bool = True,
    ) -> None:
        for f in (UNIT, UPHOLDS, UE_DROPIN):
            assert f.exists(), f"{f} missing: run `piccolo-build render`"
        self.m, self.disk, self.tpm = machine, disk, tpm
        m = machine
        m.binds += [
            f"--bind={disk}:/opt/disk/disk.img",
            f"--bind-ro={tpm.root}:/opt/tpm",
            f"--bind-ro={m.root / 'policy.yaml'}:/etc/piccolod/health-policy.yaml",
            "--private-network",
        ]
        (m.root / "policy.yaml").write_text(policy_yaml(reboot))
        m.add_unit("piccolod.service", UNIT.read_text())
        m.add_dropin("multi-user.target", "10-piccolod.conf", UPHOLDS.read_bytes())
        # nspawn fakes a fresh boot id per boot by a bind mount over the kernel's file; the unit's
        # ProtectProc= mounts a new /proc that shows the host's again, so bind the machine's one back.
        m.add_unit(
            "boot-id.service",
            "[Unit]\nDescription=keep this machine's boot id for piccolod\nBefore=piccolod.service\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id > /run/machine-boot-id'\n",
            wanted_by="multi-user.target",
        )
        m.add_dropin(
            "piccolod.service",
            "50-test.conf",
            "[Unit]\nWants=boot-id.service\nAfter=boot-id.service\n"
            f"[Service]\nExecStart=\nExecStart={PY} -m piccolod serve\nEnvironment={ENV}\n"
            "BindReadOnlyPaths=/run/machine-boot-id:/proc/sys/kernel/random/boot_id\n"
            f"{unit_extra}",
        )
        m.add_unit(
            "update-engine.service",
            "[Unit]\nDescription=stand-in for update-engine (marks the booted slot good)\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/opt/t/update-engine\n",
            wanted_by="multi-user.target",
        )
        dropin = UE_DROPIN.read_bytes() if ue_dropin is None else ue_dropin
        m.add_dropin("update-engine.service", "10-piccolod-dependency.conf", dropin)
        if probe:
            self.add_probe()
        # Part of reboot.target: proof that PID 1 is really rebooting, and this boot's journal.
        m.add_unit(
            "rebooting.service",
            "[Unit]\nDescription=note that this machine reboots\nDefaultDependencies=no\n"
            "After=piccolod.service\nBefore=systemd-reboot.service\n"
            "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id "
            "> /opt/out/rebooting; journalctl -b --no-pager -o short-monotonic -u piccolod.service "
            "> /opt/out/journal.txt'\n",
            wanted_by="reboot.target",
        )
        m.add_script(
            "update-engine",
            f"#!/bin/sh\nexport {ENV}\nexec {PY} -m tests.fixtures.gptdisk mark-booted "
            "/opt/disk/disk.img /opt/t/cmdline\n",
        )
        m.add_script("reboot", '#!/bin/sh\nexec logger -t piccolo-test-reboot "reboot requested: $*"\n')

    def add_probe(self) -> None:
        """The unit that reports what systemd saw and then ends the boot."""
        self.m.add_unit(
            "probe.service",
            "[Unit]\nDescription=report what systemd saw\nAfter=multi-user.target\n"
            "SuccessAction=exit-force\nFailureAction=exit-force\n"
            f"[Service]\nType=oneshot\nEnvironment={ENV}\n"
            f"ExecStart={PY} {MACHINE_ROOT}/tests/fixtures/nspawn_probe.py 60\n",
            wanted_by="multi-user.target",
        )

    def start(self, *, during: Callable[[str], None] | None = None, timeout: float = 90) -> tuple[str, Boot]:
        """Play GRUB and boot once; the boot's PARTUUID and how it ended (no assertion on the probe)."""
        booted = gptprio_next(self.disk)  # GRUB
        (self.m.opt / "cmdline").write_text(cmdline_for(booted))
        for stale in ("probe.json", "journal.txt", "rebooting"):
            (self.m.out / stale).unlink(missing_ok=True)
        boot = self.m.boot(timeout=timeout, during=during)
        assert not boot.timed_out, f"boot did not end within {timeout}s" + self.context(boot)
        return booted, boot

    def context(self, boot: Boot) -> str:
        journal = self.m.out / "journal.txt"
        return f"\n--- console ---\n{boot.console[-4000:]}\n--- journal ---\n" + (
            journal.read_text()[-6000:] if journal.exists() else "(none)"
        )

    def boot(self, *, during: Callable[[str], None] | None = None, timeout: float = 90) -> Report:
        booted, boot = self.start(during=during, timeout=timeout)
        probe = self.m.out / "probe.json"
        context = self.context(boot)
        assert probe.exists(), f"probe did not report (nspawn rc={boot.rc})" + context
        return Report(json.loads(probe.read_text()), booted, boot.wall)

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.m.state / "rollback.json").read_text())
        return data


@pytest.fixture
def rig(machine: Machine, flatcar_disk: Path, fresh_swtpm: Swtpm) -> Rig:
    return Rig(machine, flatcar_disk, fresh_swtpm)


def _metric(report: Report, name: str) -> float:
    for line in report.data["metrics"].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_healthy_update_is_marked_after_the_gate(rig: Rig) -> None:
    install_update(rig.disk, USR_A)
    r = rig.boot()
    assert r.booted == USR_B
    pd, ue = r.unit("piccolod"), r.unit("update-engine")
    assert pd["ActiveState"] == "active", pd
    assert r.started("update-engine") and ue["Result"] == "success", ue
    # update-engine started only after piccolod became ready (systemd's own timestamps).
    assert int(ue["ExecMainStartTimestampMonotonic"]) >= int(pd["ActiveEnterTimestampMonotonic"]) > 0
    assert r.health["startup_health_check"] == "passed"
    assert r.data["reboot_requests"] == 0
    b = slot(rig.disk, USR_B)
    assert (b.successful, b.tries) == (True, 0)
    assert gptprio_next(rig.disk) == USR_B  # the next boot stays on the update
    assert not (rig.m.state / "rollback.json").exists()


def test_unhealthy_update_rolls_back_once_and_says_why(rig: Rig) -> None:
    install_update(rig.disk, USR_A)
    rig.tpm.stop()  # the TPM is gone: a required component is down
    r = rig.boot()
    assert r.booted == USR_B
    pd = r.unit("piccolod")
    assert not r.started("update-engine"), r.unit("update-engine")
    assert pd["ActiveState"] == "failed" and pd["ExecMainStatus"] == "3", pd
    assert r.data["reboot_requests"] == 1
    assert r.data["health_status"] == 0  # the agent exited after the failed gate: no API
    assert r.data["status"]["last_gate"]["startup_health_check"] == "failed"
    b = slot(rig.disk, USR_B)
    assert (b.successful, b.tries) == (False, 0)
    record = rig.record()
    assert record["slot"] == "USR-B" and record["partuuid"] == USR_B
    assert record["condition"] == "critical_component_failure" and record["reboot_requested"]
    assert record["boot_id"] == r.data["boot_id"]
    tpm = next(c for c in record["components"] if c["component"] == "tpm")
    assert not tpm["healthy"] and tpm["required"] and tpm["reason"]

    rig.tpm.start()  # the old slot's machine is healthy again
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


def test_marked_slot_with_unhealthy_component_does_not_block_update_engine(rig: Rig) -> None:
    rig.tpm.stop()
    r = rig.boot()
    assert r.booted == USR_A
    pd = r.unit("piccolod")
    assert pd["ActiveState"] == "active", pd
    assert r.started("update-engine")
    assert r.data["health_status"] == 503 and r.health["status"] == "unhealthy"
    assert r.health["startup_health_check"] == "skipped"
    assert r.data["reboot_requests"] == 0
    # piccolod was ready at once: before its first assessment could have finished a TPM retry loop.
    ready = int(pd["ActiveEnterTimestampMonotonic"]) - int(pd["ExecMainStartTimestampMonotonic"])
    assert 0 < ready < 3_000_000, ready


def _agent_pid(cg: str, timeout: float = 30) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = pids_in(cg, "piccolod.service", "-m piccolod serve")
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("piccolod never started")


def _crash(sig: signal.Signals, delay: float) -> Callable[[str], None]:
    def during(cg: str) -> None:
        pid = _agent_pid(cg)
        time.sleep(delay)  # well inside the gate's retry loop (the TPM is down)
        os.kill(pid, sig)

    return during


def test_agent_crashing_during_the_gate_keeps_it_closed(rig: Rig) -> None:
    install_update(rig.disk, USR_A)
    rig.tpm.stop()
    r = rig.boot(during=_crash(signal.SIGKILL, 1.5))
    pd = r.unit("piccolod")
    assert not r.started("update-engine"), r.unit("update-engine")
    journal = (rig.m.out / "journal.txt").read_text()
    assert "code=killed, status=9/KILL" in journal
    assert "Scheduled restart job" in journal  # Restart=on-failure; the restarted agent failed the gate
    assert "gate FAILED on USR-B" in journal
    assert pd["ActiveState"] == "failed"
    assert r.data["reboot_requests"] == 1
    assert slot(rig.disk, USR_B).successful is False


def test_agent_hanging_during_the_gate_is_ended_by_systemds_timeout(
    machine: Machine, flatcar_disk: Path, fresh_swtpm: Swtpm
) -> None:
    # The rendered TimeoutStartSec is deadline + grace + 60 s; the test shortens it so the boot stays short.
    rig = Rig(machine, flatcar_disk, fresh_swtpm, unit_extra="TimeoutStartSec=6\n")
    install_update(rig.disk, USR_A)
    rig.tpm.stop()
    r = rig.boot(during=_crash(signal.SIGSTOP, 1.0))
    journal = (rig.m.out / "journal.txt").read_text()
    assert "timed out" in journal, journal[-3000:]
    assert not r.started("update-engine"), r.unit("update-engine")
    assert r.unit("piccolod")["ActiveState"] == "failed"
    assert r.data["reboot_requests"] <= 1
    assert slot(rig.disk, USR_B).successful is False
    assert read_table(rig.disk).by_partuuid(USR_B) is not None


def test_harness_detects_a_missing_update_engine_dropin(
    machine: Machine, flatcar_disk: Path, fresh_swtpm: Swtpm
) -> None:
    """Negative control: without the Requires=/After= drop-in the same failed gate marks the bad slot."""
    rig = Rig(machine, flatcar_disk, fresh_swtpm, ue_dropin=b"# emptied\n")
    install_update(rig.disk, USR_A)
    rig.tpm.stop()
    r = rig.boot()
    assert r.started("update-engine")
    assert slot(rig.disk, USR_B).successful is True  # what the gate exists to prevent


def test_real_systemctl_reboot_gets_through_the_sandbox(
    machine: Machine, flatcar_disk: Path, fresh_swtpm: Swtpm
) -> None:
    """The policy's default reboot command, ``systemctl reboot``, run by the rendered, sandboxed unit."""
    rig = Rig(machine, flatcar_disk, fresh_swtpm, reboot="", probe=False)
    install_update(rig.disk, USR_A)
    rig.tpm.stop()
    booted, boot = rig.start(timeout=60)
    assert booted == USR_B
    context = rig.context(boot)
    assert boot.rc == 133, f"nspawn exit status {boot.rc}, not 133 (container rebooted)" + context
    rebooting = rig.m.out / "rebooting"
    assert rebooting.exists(), "reboot.target was never reached" + context
    journal = (rig.m.out / "journal.txt").read_text()
    assert "reboot requested: systemctl reboot" in journal, journal
    record = rig.record()
    assert record["reboot_requested"] and record["boot_id"] == rebooting.read_text().strip()
    assert "Rebooting." in boot.console
    assert slot(rig.disk, USR_B).successful is False
    print(f"real reboot: nspawn rc={boot.rc} after {boot.wall:.1f}s")

    rig.tpm.start()
    rig.add_probe()
    r2 = rig.boot()  # what GRUB does after that reboot: the old slot, and the agent says why
    assert r2.booted == USR_A and r2.health["update_status"] == "rolled_back", r2.health


def test_crash_during_a_passing_gate_still_lets_update_engine_mark_the_slot(
    machine: Machine, flatcar_disk: Path, fresh_swtpm: Swtpm
) -> None:
    """SIGKILL mid-gate fails update-engine's start job ("dependency"); the restarted agent's pass must
    start it again, or a healthy update would be rolled back on the next reboot."""
    rig = Rig(machine, flatcar_disk, fresh_swtpm, unit_extra="RestartSec=1\n")
    install_update(rig.disk, USR_A)
    rig.tpm.stop()  # the first attempt keeps retrying...

    def crash_then_heal(cg: str) -> None:
        pid = _agent_pid(cg)
        time.sleep(1.5)
        os.kill(pid, signal.SIGKILL)  # ...until it is killed mid-gate
        rig.tpm.start()  # and the restarted agent finds a healthy machine

    r = rig.boot(during=crash_then_heal)
    journal = (rig.m.out / "journal.txt").read_text()
    assert "code=killed, status=9/KILL" in journal, journal[-3000:]
    assert "Dependency failed for update-engine.service" in journal, journal[-3000:]
    assert "earlier gate of this boot never finished" in journal
    pd, ue = r.unit("piccolod"), r.unit("update-engine")
    assert pd["ActiveState"] == "active" and pd["NRestarts"] == "1", pd
    assert r.health["startup_health_check"] == "passed"
    assert r.started("update-engine") and ue["Result"] == "success", ue
    assert int(ue["ExecMainStartTimestampMonotonic"]) >= int(pd["ActiveEnterTimestampMonotonic"]) > 0
    assert r.data["reboot_requests"] == 0
    b = slot(rig.disk, USR_B)
    assert (b.successful, b.tries) == (True, 0)


def test_marked_slot_with_a_typo_in_the_admin_policy_still_lets_update_engine_start(
    machine: Machine, flatcar_disk: Path, fresh_swtpm: Swtpm
) -> None:
    """A bad /etc/piccolod/health-policy.yaml must not block a marked slot: the agent falls back to the
    vendor policy, says so in the health document, and is ready at once (never exit 3 for it)."""
    vendor = machine.root / "vendor-lib"
    (vendor / "piccolod").mkdir(parents=True)
    (vendor / "piccolod" / "health-policy.yaml").write_text(policy_yaml())
    # /usr is the host's, read-only: the vendor file comes in as an overlay layer over /usr/lib.
    machine.binds.append(f"--overlay-ro=/usr/lib:{vendor}:/usr/lib")
    rig = Rig(machine, flatcar_disk, fresh_swtpm)
    admin = policy_yaml().replace("  rollback:", "  runtime: {failure_treshold: 3}\n  rollback:")
    (rig.m.root / "policy.yaml").write_text(admin)
    r = rig.boot()
    assert r.booted == USR_A
    pd, ue = r.unit("piccolod"), r.unit("update-engine")
    assert pd["ActiveState"] == "active" and pd["NRestarts"] == "0", pd
    assert r.started("update-engine") and ue["Result"] == "success", ue
    err = r.health.get("policy_error") or ""
    assert "/etc/piccolod/health-policy.yaml:" in err and "failure_treshold" in err, r.health
    assert r.health["startup_health_check"] == "skipped"
    journal = (rig.m.out / "journal.txt").read_text()
    assert "falling back to the vendor policy" in journal, journal[-3000:]


def test_marked_slot_after_a_failed_first_start_still_starts_update_engine(
    machine: Machine, flatcar_disk: Path, fresh_swtpm: Swtpm
) -> None:
    """The first start of piccolod fails before the agent runs (ExecStartPre=, as a crash or an OOM
    kill would): update-engine's start job fails with it; the restarted agent must start it again."""
    once = "ExecStartPre=/bin/sh -c 'test -e /run/piccolod-once || { touch /run/piccolod-once; exit 1; }'\n"
    rig = Rig(machine, flatcar_disk, fresh_swtpm, unit_extra=once + "RestartSec=1\n")
    r = rig.boot()
    assert r.booted == USR_A
    pd, ue = r.unit("piccolod"), r.unit("update-engine")
    assert pd["ActiveState"] == "active" and pd["NRestarts"] == "1", pd
    journal = (rig.m.out / "journal.txt").read_text()
    assert "systemd restarted piccolod.service 1 time(s)" in journal, journal[-3000:]
    assert "asked systemd to start update-engine" in journal, journal[-3000:]
    assert r.started("update-engine") and ue["Result"] == "success", ue
    assert slot(rig.disk, USR_A).successful is True
