"""The acceptance scenarios in QEMU virtual machines, on the stand-in machine (docs/vm-test.md).

The scenarios run in the background from the start of the session (``tests/fixtures/vmrun.py``: one VM at a
time beside the other tests, two at the end); these tests run last and each holds one scenario's outcome.
Under TCG where KVM cannot boot a guest: never skipped, a missing QEMU or swtpm fails."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.privileged]
Outcomes = dict[tuple[str, str], dict[str, object]]
MODEL = ""  # the stand-in's one boot model


def _held(outcomes: Outcomes, name: str) -> dict[str, object]:
    o = outcomes.get((MODEL, name))
    assert o is not None, f"{name}: no outcome in the run's report ({sorted(outcomes)})"
    assert o["ok"], f"{name}: {o['message']} (logs: {o['logs']})"
    return o


@pytest.mark.scenario("healthy-boot")
def test_healthy_boot(vm_outcomes: Outcomes) -> None:
    o = _held(vm_outcomes, "healthy-boot")
    assert o["boots"] == 1


@pytest.mark.scenario("docker-stopped")
def test_docker_stopped(vm_outcomes: Outcomes) -> None:
    o = _held(vm_outcomes, "docker-stopped")
    notes = o["notes"]
    assert isinstance(notes, dict) and "unhealthy after" in notes and "recovered after" in notes


@pytest.mark.scenario("healthy-update")
def test_healthy_update(vm_outcomes: Outcomes) -> None:
    o = _held(vm_outcomes, "healthy-update")
    assert o["boots"] == 2  # the update's boot, and the boot after it was accepted: still USR-B


@pytest.mark.scenario("broken-update")
def test_broken_update(vm_outcomes: Outcomes) -> None:
    o = _held(vm_outcomes, "broken-update")
    assert o["boots"] == 2  # the broken slot's boot and the fallback: exactly one reboot


@pytest.mark.scenario("crash-before-userspace")
def test_crash_before_userspace(vm_outcomes: Outcomes) -> None:
    o = _held(vm_outcomes, "crash-before-userspace")
    assert o["boots"] == 2


@pytest.mark.scenario("two-disks")
def test_two_disks(vm_outcomes: Outcomes) -> None:
    o = _held(vm_outcomes, "two-disks")
    assert o["boots"] == 1
