"""The acceptance scenarios in QEMU virtual machines, on the stand-in machine in both its boot models (the
piccolod sysext merged late, or in a systemd initrd; docs/vm-test.md).

The scenarios run in the background from the start of the session (``tests/fixtures/vmrun.py``: one VM at a
time beside the other tests, two at the end); these tests run last and each holds one scenario's outcome
in one model. Under TCG where KVM cannot boot a guest: never skipped, a missing QEMU or swtpm fails."""

from __future__ import annotations

import pytest

from piccolo_build.vm import models

pytestmark = [
    pytest.mark.vm, pytest.mark.slow, pytest.mark.privileged,
    pytest.mark.parametrize("model", [m.name for m in models.MODELS]),
]  # fmt: skip
Outcomes = dict[tuple[str, str], dict[str, object]]


def _held(outcomes: Outcomes, model: str, name: str) -> dict[str, object]:
    o = outcomes.get((model, name))
    assert o is not None, f"{model}/{name}: no outcome in the run's report ({sorted(outcomes)})"
    assert o["ok"], f"{model}/{name}: {o['message']} (logs: {o['logs']})"
    return o


@pytest.mark.scenario("healthy-boot")
def test_healthy_boot(vm_outcomes: Outcomes, model: str) -> None:
    o = _held(vm_outcomes, model, "healthy-boot")
    assert o["boots"] == 1


@pytest.mark.scenario("docker-stopped")
def test_docker_stopped(vm_outcomes: Outcomes, model: str) -> None:
    o = _held(vm_outcomes, model, "docker-stopped")
    notes = o["notes"]
    assert isinstance(notes, dict) and "unhealthy after" in notes and "recovered after" in notes


@pytest.mark.scenario("healthy-update")
def test_healthy_update(vm_outcomes: Outcomes, model: str) -> None:
    o = _held(vm_outcomes, model, "healthy-update")
    assert o["boots"] == 2  # the update's boot, and the boot after it was accepted: still USR-B


@pytest.mark.scenario("broken-update")
def test_broken_update(vm_outcomes: Outcomes, model: str) -> None:
    o = _held(vm_outcomes, model, "broken-update")
    assert o["boots"] == 2  # the broken slot's boot and the fallback: exactly one reboot


@pytest.mark.scenario("crash-before-userspace")
def test_crash_before_userspace(vm_outcomes: Outcomes, model: str) -> None:
    o = _held(vm_outcomes, model, "crash-before-userspace")
    assert o["boots"] == 2


@pytest.mark.scenario("two-disks")
def test_two_disks(vm_outcomes: Outcomes, model: str) -> None:
    o = _held(vm_outcomes, model, "two-disks")
    assert o["boots"] == 1
