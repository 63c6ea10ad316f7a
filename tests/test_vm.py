"""The acceptance scenarios in QEMU virtual machines, on the stand-in machine (docs/vm-test.md).

One stand-in build and one run of all six scenarios per session, two VMs at once (each has one vCPU);
every test holds one scenario's outcome. Under TCG where KVM cannot boot a guest: never skipped, a
missing QEMU or swtpm fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from piccolo_build.config import load_config
from piccolo_build.vm import qemu, runner, scenarios, standin

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.privileged]


@pytest.fixture(scope="session")
def vm_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, runner.Outcome]:
    cfg = load_config(ROOT / "piccolo.yaml", env={})
    s = standin.build(cfg, standin.default_cache())
    out = tmp_path_factory.mktemp("vm-test")
    accel, why = qemu.choose_accel(s.vmlinuz, s.initrd, out)
    print(f"stand-in {s.key} ({'built' if s.built else 'cached'}, {s.seconds:.0f}s); {accel}: {why}")
    outcomes = runner.run_scenarios(s, scenarios.SCENARIOS, out, accel, jobs=2)
    return {o.name: o for o in outcomes}


def _held(outcomes: dict[str, runner.Outcome], name: str) -> runner.Outcome:
    o = outcomes[name]
    assert o.ok, f"{name}: {o.message} (logs: {o.logs})"
    return o


def test_healthy_boot(vm_outcomes: dict[str, runner.Outcome]) -> None:
    o = _held(vm_outcomes, "healthy-boot")
    assert o.boots == 1


def test_docker_stopped(vm_outcomes: dict[str, runner.Outcome]) -> None:
    o = _held(vm_outcomes, "docker-stopped")
    assert "unhealthy after" in o.notes and "recovered after" in o.notes


def test_healthy_update(vm_outcomes: dict[str, runner.Outcome]) -> None:
    o = _held(vm_outcomes, "healthy-update")
    assert o.boots == 2  # the update's boot, and the boot after it was accepted: still USR-B


def test_broken_update(vm_outcomes: dict[str, runner.Outcome]) -> None:
    o = _held(vm_outcomes, "broken-update")
    assert o.boots == 2  # the broken slot's boot and the fallback: exactly one reboot


def test_crash_before_userspace(vm_outcomes: dict[str, runner.Outcome]) -> None:
    o = _held(vm_outcomes, "crash-before-userspace")
    assert o.boots == 2


def test_two_disks(vm_outcomes: dict[str, runner.Outcome]) -> None:
    o = _held(vm_outcomes, "two-disks")
    assert o.boots == 1
