"""The gate on Flatcar's boot order: real systemd 252 and 257, piccolod merged from a real sysext image.

Every scenario runs on both systemd versions (tests/fixtures/bootrig.py has the rig) and says when, or
whether, update-engine started relative to piccolod's ``READY=1`` and its pass token. docs/boot.md maps
each scenario to the property it proves:

- a healthy update is marked after the gate passed, whatever follows the merge: (a) a daemon-reload
  only, (b) a reload and a restart of the targets (ensure-sysext), (c) nothing, (d) a merge after
  multi-user.target was planned;
- an unmarked slot is never marked without a pass of this boot: (e) the sysext missing, (f) failing to
  merge, (g) the agent killed mid-gate, (h) the agent hung until systemd's start timeout, (i) the agent
  restarted mid-gate;
- a marked slot is never blocked: (j) the sysext missing, (k) the agent crash-looping;
- (l) restarting piccolod leaves a running update-engine alone;
- (m) one gate per boot: after a failed gate, restarts and starts of the agent neither gate nor reboot;
- (n) negative control: without update-engine's drop-in the rig reports the bypass.

Each test prints ``READY=1 -> update-engine`` for the record (``pytest -s``; bench/gate.py --boots
measures it repeatedly).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from piccolo_build.vm.disk import sparse_copy
from tests.fixtures.bootrig import (
    GUARD_WAIT,
    RESTART_MID_GATE,
    BootRig,
    Report,
    Staged,
    gate_violations,
    heal_after_restart,
    signal_agent,
)
from tests.fixtures.gptdisk import USR_A, USR_B, install_update, set_attrs, slot
from tests.fixtures.nspawn import Machine

pytestmark = [pytest.mark.slow, pytest.mark.privileged, pytest.mark.boot]

SYSTEMD = pytest.mark.parametrize("systemd", [252, 257])


def rig(machine: Machine, disk: Path, staged: Staged, systemd: int, **kw: object) -> BootRig:
    return BootRig(machine, disk, staged, systemd, **kw)  # type: ignore[arg-type]


def latency(name: str, r: Report) -> None:
    print(f"\n{name}: READY=1 -> update-engine start {r.ue_after_ready() * 1000:.0f} ms")


def assert_marked_after_pass(r: Report, disk: Path) -> None:
    pd, ue = r.unit("piccolod"), r.unit("update-engine")
    assert pd["ActiveState"] == "active", pd
    assert r.health["startup_health_check"] == "passed", r.health
    assert r.data["token"] == r.data["boot_id"]
    assert r.started("update-engine") and ue["ActiveState"] == "active", ue
    assert gate_violations(r) == []
    assert r.ue_after_ready() >= 0, r.journal[-3000:]
    b = slot(disk, USR_B)
    assert (b.successful, b.tries) == (True, 0)


def assert_held(r: Report, disk: Path) -> None:
    """Unmarked slot, no pass: update-engine never ran and the slot stays unmarked."""
    assert not r.started("update-engine"), r.unit("update-engine")
    assert r.data["ue_starts"] == 0
    assert gate_violations(r) == []
    assert slot(disk, USR_B).successful is False


# --- a healthy update, whatever follows the merge --------------------------------------------------


@SYSTEMD
@pytest.mark.parametrize("after", ["reload", "ensure", "nothing", "late"])
def test_healthy_update_is_marked_after_the_gate(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int, after: str
) -> None:
    """(a) reload only, (b) reload and target restart, (c) nothing after the merge, (d) a late merge."""
    r_ = rig(machine, flatcar_disk, staged, systemd, after=after)
    r_.healthy()
    install_update(flatcar_disk, USR_A)
    r = r_.boot()
    assert r.booted == USR_B
    assert "piccolod" in r.data["sysext"], r.data["sysext"]
    assert_marked_after_pass(r, flatcar_disk)
    assert r.data["reboot_requests"] == 0
    latency(f"systemd {systemd}, merge + {after}", r)
    # multi-user.target is After= update-engine, which is After= the guard: it waits for the gate.
    waited, after_ready = (
        r.target_after("piccolod-guard"),
        r.target_after("piccolod", "ActiveEnterTimestampMonotonic"),
    )
    assert waited >= after_ready >= 0
    print(
        f"  multi-user.target: {waited:.2f}s after the guard started, "
        f"{after_ready * 1000:.0f} ms after READY=1"
    )


@SYSTEMD
@pytest.mark.parametrize("link_to", [0, 1], ids=["links-to-the-booted-disk", "links-to-the-old-disk"])
def test_a_second_flatcar_disk_cannot_open_the_gate(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int, link_to: int, tmp_path: Path
) -> None:
    """Issue 13, 2: an old Flatcar install beside the booted disk, its USR-B (the same PARTUUID) marked
    long ago. Whichever disk's partition udev's /dev/disk/by-partuuid links name, the booted USR-B is the
    fresh, unmarked one: the guard holds update-engine and the agent gates it (unhealthy here: no pass)."""
    install_update(flatcar_disk, USR_A)
    old = tmp_path / "old.img"
    sparse_copy(flatcar_disk, old)
    set_attrs(old, 4, priority=2, tries=0, successful=True)
    r_ = rig(
        machine,
        flatcar_disk,
        staged,
        systemd,
        extra_disks=(old,),
        links={USR_B: (link_to, 4), USR_A: (link_to, 3)},
    )
    r = r_.boot()
    assert r.booted == USR_B
    links = (machine.out / "links").read_text()
    assert f"{USR_B} -> {r_.loops[link_to].part(4)}" in links, links
    assert_held(r, flatcar_disk)
    assert r.health["startup_health_check"] == "failed", r.health  # gated, not skipped as marked
    assert r.data["status"]["booted"]["state"] == "unmarked", r.data["status"]
    assert r.data["status"]["booted"]["disk"] == r_.loops[0].dev
    assert "the booted slot is unmarked" in r.journal
    assert slot(old, USR_B).successful  # the old disk is read, never written


@SYSTEMD
def test_where_update_engine_never_runs_the_guard_fails_nothing(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """Issue 15: a PXE or ISO image has /usr/.noupdate and no /usr slots, and update-engine does not run
    there (its ConditionPathExists=!/usr/.noupdate). The guard has the same condition: skipped, not failed,
    even on an unmarked slot without the agent."""
    install_update(flatcar_disk, USR_A)
    r = rig(machine, flatcar_disk, staged, systemd, noupdate=True, sysext="missing").boot()
    guard = r.unit("piccolod-guard")
    assert (guard["ActiveState"], guard["ConditionResult"]) == ("inactive", "no"), guard
    assert guard["Result"] == "success" and not r.started("update-engine")
    assert r.unit("update-engine")["ConditionResult"] == "no"
    assert r.data["pending_jobs"] == []


# --- an unmarked slot without a pass: never marked ----------------------------------------------------


@SYSTEMD
@pytest.mark.parametrize("sysext", ["missing", "bad-id"])
def test_unmarked_slot_without_the_agent_keeps_update_engine_stopped(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int, sysext: str
) -> None:
    """(e) the sysext missing, (f) a sysext that fails to merge: the guard gives up, no update-engine."""
    r_ = rig(machine, flatcar_disk, staged, systemd, sysext=sysext)
    r_.healthy()
    install_update(flatcar_disk, USR_A)
    r = r_.boot()
    assert r.booted == USR_B
    assert_held(r, flatcar_disk)
    assert r.unit("piccolod")["LoadState"] == "not-found"
    assert r.unit("piccolod-guard")["ActiveState"] == "failed"
    assert r.unit("piccolod-start")["Result"] == "exit-code"
    assert f"no pass from piccolod within {GUARD_WAIT}s" in r.journal
    assert "piccolod.service not found" in r.journal
    # multi-user.target waits for the guard's whole wait (GUARD_WAIT here; 270 s with the defaults).
    waited = r.target_after("piccolod-guard")
    assert waited >= GUARD_WAIT
    print(f"\nsystemd {systemd}, {sysext}: multi-user.target {waited:.1f}s after the guard")
    if sysext == "bad-id":
        assert "piccolod" not in r.data["sysext"] and "systemd-sysext" in r.journal


@SYSTEMD
def test_agent_killed_mid_gate_resumes_and_update_engine_waits_for_the_pass(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(g) SIGKILL during the gate: nothing starts update-engine; the restarted agent resumes the same
    gate, passes once the machine is healthy, and only then update-engine runs."""
    r_ = rig(machine, flatcar_disk, staged, systemd)
    install_update(flatcar_disk, USR_A)
    r = r_.boot(during=signal_agent(signal.SIGKILL, 1.5, then=r_.healthy))
    assert "status=9/KILL" in r.journal, r.journal[-3000:]
    assert "resuming it" in r.journal
    assert r.unit("piccolod")["NRestarts"] == "1"
    assert_marked_after_pass(r, flatcar_disk)
    latency(f"systemd {systemd}, killed mid-gate then healthy", r)


@SYSTEMD
def test_agent_hung_mid_gate_is_ended_by_the_start_timeout_and_the_slot_stays_unmarked(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(h) SIGSTOP during the gate: systemd's TimeoutStartSec= ends it; one reboot, no update-engine.

    systemd ends the hang with SIGTERM and SIGCONT together, so the woken agent meets two things at once:
    its stop and its own deadline (passed while it was stopped). Seeing the stop first, it gives no
    verdict, and the restarted agent resumes the gate past its first deadline: startup_timeout at once.
    Seeing its deadline first, it gives the verdict of its last assessment (the lever is unhealthy:
    critical_component_failure), and the restarted agent gives that verdict again. Both happen on a busy
    host; both fail closed with one reboot."""
    r_ = rig(machine, flatcar_disk, staged, systemd, agent_extra="TimeoutStartSec=7\n")
    install_update(flatcar_disk, USR_A)
    r = r_.boot(during=signal_agent(signal.SIGSTOP, 1.0))
    assert "timed out" in r.journal, r.journal[-3000:]
    condition = r.data["status"]["last_gate"]["condition"]
    if "resuming it" in r.journal:
        assert condition == "startup_timeout"
    else:
        assert "already gave its verdict (failed)" in r.journal, r.journal[-3000:]
        assert condition == "critical_component_failure"
    assert r.health["startup_health_check"] == "failed"
    assert r.data["reboot_requests"] == 1
    assert_held(r, flatcar_disk)


@SYSTEMD
def test_agent_restarted_mid_gate_keeps_its_deadline(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(i) ``systemctl restart piccolod`` during the gate: update-engine waits; the restarted agent
    resumes with the first deadline and opens the gate when the machine is healthy."""
    r_ = rig(machine, flatcar_disk, staged, systemd, units={"rig-restart.service": RESTART_MID_GATE})
    install_update(flatcar_disk, USR_A)
    r = r_.boot(during=heal_after_restart(r_))
    assert "resuming it" in r.journal, r.journal[-3000:]
    assert_marked_after_pass(r, flatcar_disk)
    latency(f"systemd {systemd}, restarted mid-gate then healthy", r)


# --- a marked slot: never blocked ------------------------------------------------------------------


@SYSTEMD
def test_marked_slot_without_the_sysext_still_runs_update_engine(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(j) the piccolod sysext is missing: the guard sees the slot marked and lets update-engine go."""
    r = rig(machine, flatcar_disk, staged, systemd, sysext="missing").boot()
    assert r.booted == USR_A
    assert r.unit("piccolod")["LoadState"] == "not-found"
    assert r.unit("piccolod-guard")["ActiveState"] == "active"
    assert r.started("update-engine") and r.unit("update-engine")["ActiveState"] == "active"
    assert slot(flatcar_disk, USR_A).successful is True


@SYSTEMD
def test_marked_slot_with_a_crash_looping_agent_still_runs_update_engine(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(k) piccolod exits 1 at every start until systemd's start limit: update-engine runs anyway."""
    crash = "ExecStart=\nExecStart=/bin/sh -c 'exit 1'\nRestartSec=100ms\n"
    r = rig(machine, flatcar_disk, staged, systemd, agent_extra=crash).boot()
    assert r.booted == USR_A
    pd = r.unit("piccolod")
    assert pd["ActiveState"] == "failed" and int(pd["NRestarts"]) >= 2, pd
    assert r.started("update-engine") and r.unit("update-engine")["ActiveState"] == "active"
    assert r.data["token"] is None


# --- restarts and one gate per boot -----------------------------------------------------------------


@SYSTEMD
def test_restarting_the_agent_leaves_a_running_update_engine_alone(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(l) ``systemctl restart piccolod`` while update-engine runs: same process, started once."""
    restart = (
        "[Unit]\nDescription=restart the agent while update-engine runs\nAfter=update-engine.service\n"
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'sleep 1; systemctl show -P MainPID update-engine "
        "> /srv/out/ue-pid-before; systemctl restart piccolod.service'\n"
    )
    r_ = rig(machine, flatcar_disk, staged, systemd, units={"rig-restart.service": restart})
    r_.healthy()
    install_update(flatcar_disk, USR_A)
    r = r_.boot()
    ue = r.unit("update-engine")
    before = (machine.out / "ue-pid-before").read_text().strip()
    assert before != "0" and ue["MainPID"] == before, (before, ue)
    assert r.data["ue_starts"] == 1 and ue["NRestarts"] == "0"
    assert int(ue["ExecMainStartTimestampMonotonic"]) < r.ready_at()  # the agent's READY=1 came later
    # One assessed gate: the restarted agent found this boot's pass (or, later, the slot marked good).
    gates = [ln for ln in r.journal.splitlines() if "gate open after" in ln and "components passed" in ln]
    assert len(gates) == 1, r.journal[-3000:]
    assert_marked_after_pass_once_restarted(r, flatcar_disk)


def assert_marked_after_pass_once_restarted(r: Report, disk: Path) -> None:
    assert r.unit("piccolod")["ActiveState"] == "active"
    # "skipped" when update-engine had already marked the slot good before the restart
    assert r.health["startup_health_check"] in ("passed", "skipped")
    assert r.data["token"] == r.data["boot_id"]
    assert slot(disk, USR_B).successful is True


@SYSTEMD
def test_one_gate_per_boot_whatever_restarts_the_agent(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(m) a failed gate, then ``systemctl restart``, a SIGKILL (Restart=) and ``systemctl start``: no
    second gate, no second reboot, no token, no update-engine; the agent stays up serving the failure."""
    again = (
        "[Unit]\nDescription=try to make the agent gate again\nAfter=piccolod.service\n"
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'until journalctl -b -u piccolod -o cat | grep -q "
        '"reboot requested"; do sleep 0.2; done; systemctl restart piccolod.service; '
        "systemctl kill -s KILL piccolod.service; sleep 2; systemctl start piccolod.service'\n"
    )
    r_ = rig(machine, flatcar_disk, staged, systemd, units={"rig-again.service": again})
    install_update(flatcar_disk, USR_A)
    r = r_.boot()
    assert r.journal.count("gate FAILED on USR-B") == 1, r.journal[-4000:]
    assert r.journal.count("already gave its verdict") >= 2
    assert r.data["reboot_requests"] == 1
    pd = r.unit("piccolod")
    assert pd["ActiveState"] == "active", pd  # READY=1 after the verdict: up, serving the failure
    assert r.health["startup_health_check"] == "failed" and r.data["health_status"] == 503
    assert r.data["token"] is None
    assert_held(r, flatcar_disk)


# --- the rig can fail --------------------------------------------------------------------------------


@SYSTEMD
def test_the_rig_reports_a_bypass_without_the_update_engine_dropin(
    machine: Machine, flatcar_disk: Path, staged: Staged, systemd: int
) -> None:
    """(n) negative control: the base layer without update-engine's drop-in, an unhealthy update:
    update-engine starts and marks the bad slot, and :func:`gate_violations` says so."""
    r_ = rig(machine, flatcar_disk, staged, systemd, guard=False)
    install_update(flatcar_disk, USR_A)
    r = r_.boot()
    assert r.booted == USR_B
    assert r.started("update-engine")
    assert slot(flatcar_disk, USR_B).successful is True  # what the gate exists to prevent
    violations = gate_violations(r)
    assert violations, "the rig did not notice update-engine running without a pass"
    assert any("without a pass token" in v for v in violations)
