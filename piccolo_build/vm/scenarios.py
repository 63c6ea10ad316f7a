"""The acceptance scenarios on the stand-in machine (docs/vm-test.md has the table). Each gets a fresh
machine (its own disk copy and TPM); each boot is checked like kola checks one (:mod:`.machine`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from piccolo_build.vm import disk, guest
from piccolo_build.vm.machine import Boot, Failed, Machine, expect

DOCKER = "systemd.wants=docker.service"  # docker only where a scenario needs it


@dataclass
class Notes:
    """What a scenario measured, shown on its line: name -> seconds or text."""

    values: dict[str, str] = field(default_factory=dict)

    def __setitem__(self, key: str, value: float | str) -> None:
        self.values[key] = f"{value:.0f}s" if isinstance(value, float) else value


Step = Callable[[Machine, Notes], None]


USR_MAJMIN = (
    'awk \'$5 == "/usr" { for (i = 7; $i != "-"; i++) ; if ($(i + 1) == "ext4") { print $3; exit } }\' '
    "/proc/self/mountinfo"
)


def _booted_slot(m: Machine) -> str:
    """The label of the slot mounted on /usr in the guest (its partition number)."""
    number = m.sh(f"{USR_MAJMIN} | xargs -I@ cat /sys/dev/block/@/partition").out.strip()
    return {"3": "USR-A", "4": "USR-B"}.get(number, f"partition {number or '?'}")


def _usr_device(m: Machine) -> str:
    """The kernel's name of the partition mounted on /usr in the guest: ``vda4``, ``vdb4``."""
    return m.sh(f"{USR_MAJMIN} | xargs -I@ readlink -f /sys/dev/block/@ | xargs basename").out.strip()


def _health_200(m: Machine, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    code, doc = 0, dict[str, object]()
    while time.monotonic() < deadline:
        code, doc = m.health()
        if code == 200:
            return doc
        time.sleep(2)
    raise Failed(f"GET /api/v1/system/health: {code} after {timeout:g}s (status {doc.get('status')})")


def _slot(m: Machine, label: str) -> disk.Slot:
    """The slot's bits on the booted disk: asked in the guest while it runs (what it wrote may still be in
    its page cache), else read from the image file."""
    number, partuuid = disk.SLOTS[label]
    if m.vm is None or not m.vm.running():
        return disk.slots(m.disk)[label]
    out = m.sh(f"for f in P T S; do cgpt show -i {number} -$f /dev/vda; done").out.split()
    expect(len(out) == 3 and all(x.isdigit() for x in out), f"cgpt show in the guest: {out}")
    return disk.Slot(label, number, partuuid, int(out[0]), int(out[1]), out[2] == "1")


def healthy_boot(m: Machine, n: Notes) -> None:
    m.boot(extra=DOCKER)
    n["ready"] = m.wait_ready()
    expect(_booted_slot(m) == "USR-A", f"booted {_booted_slot(m)}, not USR-A")
    doc = _health_200(m, 90)
    n["health 200"] = time.monotonic() - m.vm.started if m.vm else 0.0
    # 200 comes with "degraded" while docker (optional) is still starting: slow on a loaded host
    deadline = time.monotonic() + 90
    while doc.get("status") != "healthy" and time.monotonic() < deadline:
        time.sleep(2)
        _code, doc = m.health()
    expect(doc.get("status") == "healthy", f"status {doc.get('status')}, not healthy within 90s of 200")
    n["healthy"] = time.monotonic() - m.vm.started if m.vm else 0.0
    comps = doc.get("components")
    tpm = comps.get("tpm", {}) if isinstance(comps, dict) else {}
    expect(tpm.get("status") == "healthy", f"the TPM (/dev/tpmrm0) is not healthy: {tpm}")
    code, metrics = m.http("/metrics")
    expect(code == 200 and "piccolod_" in metrics, f"GET /metrics: {code}")
    m.poweroff()


def docker_stopped(m: Machine, n: Notes) -> None:
    m.boot(extra=DOCKER)
    m.wait_ready()
    _health_200(m, 90)
    m.sh("systemctl stop docker.socket docker.service && systemctl restart piccolod.service", 120)
    window = guest.FAILURE_THRESHOLD * guest.CHECK_INTERVAL
    t0 = time.monotonic()
    code, doc = m.health()
    while time.monotonic() - t0 < window + 30:  # + the restart and one assessment under TCG
        code, doc = m.health()
        if code == 503 and doc.get("status") == "unhealthy":
            break
        time.sleep(1)
    n["unhealthy after"] = time.monotonic() - t0
    expect(
        code == 503 and doc.get("status") == "unhealthy", f"health {code} {doc.get('status')} without docker"
    )
    comps = doc.get("components")
    docker = comps.get("docker", {}) if isinstance(comps, dict) else {}
    expect(docker.get("status") != "healthy", f"the docker component says {docker}")
    m.sh("systemctl start docker.service", 120)
    t1 = time.monotonic()
    _health_200(m, window + 60)
    n["recovered after"] = time.monotonic() - t1
    m.poweroff()


def _update(m: Machine, variant: str) -> None:
    """What the updater leaves: the new /usr in USR-B (a copy of USR-A, ``variant`` marks its gate), then
    flatcar-postinst's bits (successful=0, tries=1, top priority)."""
    disk.put_partition(m.disk, 4, m.standin.usr(variant))
    disk.install_update(m.disk, "USR-B")


def _hold_then_pass(m: Machine, n: Notes, *, booted: Boot | None = None) -> None:
    b = booted or m.boot(settle=False)
    expect(b.exit_code is None, f"boot {b.number} ended before userspace")
    expect(_booted_slot(m) == "USR-B", f"booted {_booted_slot(m)}, not USR-B")
    # update_engine would mark the slot 45 s after it starts; here it must not start while the gate holds
    t = time.monotonic()
    while (state := m.sh("systemctl is-active piccolod.service").out.strip()) != "activating":
        expect(
            state in {"inactive"} and time.monotonic() - t < 120,
            f"piccolod is {state}, not waiting at its gate",
        )
        time.sleep(1)
    wait = guest.UE_DELAY + 5
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait:
        time.sleep(5)
        s = _slot(m, "USR-B")
        expect(not s.successful, f"USR-B marked successful while the gate is pending ({s.bits()})")
        m.say(f"boot {b.number}: gate held, USR-B {s.bits()}, {time.monotonic() - t0:.0f}s of {wait}s")
    ue = m.sh("systemctl is-active update-engine.service").out.strip()
    expect(ue != "active", f"update-engine is {ue} while the gate is pending")
    n["held"] = f"{wait}s"
    m.sh(f"touch {guest.RELEASE}")
    t1 = time.monotonic()
    m.wait_ready(guest.GATE_TIMEOUT + 30)
    n["pass after release"] = time.monotonic() - t1
    m.settle()
    t2 = time.monotonic()
    while time.monotonic() - t2 < guest.UE_DELAY + 60 and not _slot(m, "USR-B").successful:
        time.sleep(3)
    s = _slot(m, "USR-B")
    expect(s.successful and s.tries == 0 and s.priority == 2, f"USR-B after the pass: {s.bits()}")
    n["marked after pass"] = time.monotonic() - t2
    _code, doc = m.health()
    expect(
        doc.get("startup_health_check") == "passed", f"startup_health_check {doc.get('startup_health_check')}"
    )


def healthy_update(m: Machine, n: Notes) -> None:
    _update(m, "holds")
    _hold_then_pass(m, n)
    m.poweroff()
    m.boot()
    expect(_booted_slot(m) == "USR-B", f"after the update was accepted, booted {_booted_slot(m)}")
    m.wait_ready()
    m.poweroff()


def broken_update(m: Machine, n: Notes) -> None:
    _update(m, "fails")
    b = m.boot(settle=False)
    expect(_booted_slot(m) == "USR-B", f"booted {_booted_slot(m)}, not USR-B")
    t0 = time.monotonic()
    m.wait_reboot(guest.GATE_TIMEOUT + 120)
    n["gate failed and rebooted"] = time.monotonic() - t0
    s = _slot(m, "USR-B")
    expect(s.tries == 0 and not s.successful, f"USR-B after its failed boot: {s.bits()}")
    back = m.boot()
    expect(back.slot.label == "USR-A", f"GRUB chose {back.slot.label}, not USR-A")
    expect(_booted_slot(m) == "USR-A", f"booted {_booted_slot(m)}")
    m.wait_ready()
    _code, doc = m.health()
    expect(doc.get("update_status") == "rolled_back", f"update_status {doc.get('update_status')}")
    reason = str(doc.get("rollback_reason") or "")
    expect("gate-fails" in reason or "broken on purpose" in reason or "vm-lever" in reason,
           f"rollback_reason does not name the failing check: {reason[:200]}")  # fmt: skip
    expect(len(m.boots) == 2 and b.number == 1, f"{len(m.boots)} boots, expected exactly 2 (one reboot)")
    n["boots"] = str(len(m.boots))
    m.poweroff()


def crash_before_userspace(m: Machine, n: Notes) -> None:
    disk.copy_range(m.disk, 0, m.disk, disk.offsets()[4][0], 0, clear=disk.offsets()[4][1])
    disk.install_update(m.disk, "USR-B")  # an update whose /usr has no file system at all
    b = m.boot()
    expect(b.exit_code is not None, "a USR-B without a file system reached userspace")
    from piccolo_build.vm.initrd import USR_FAIL_MARK

    console = m.run_dir / f"console-{b.number}.log"
    text = console.read_text(errors="replace") if console.exists() else m.console()
    expect(USR_FAIL_MARK in text, "the console does not show the failed /usr mount")
    back = m.boot()
    expect(back.slot.label == "USR-A", f"GRUB chose {back.slot.label}, not USR-A")
    m.wait_ready()
    code, doc = m.health()
    expect(code in (200, 503) and doc.get("startup_health_check") is not None, f"no health document ({code})")
    s = _slot(m, "USR-B")
    expect(s.tries == 0 and not s.successful, f"USR-B: {s.bits()}")
    n["boots"] = str(len(m.boots))
    m.poweroff()


def two_disks(m: Machine, n: Notes) -> None:
    """Two Flatcar disks with the same PARTUUIDs, both boot-capable: the second's USR-B holds a /usr (the
    update's, gate marker included) and is marked successful. Which one is mounted differs by model:

    - ``late``: our busybox initrd takes the first disk (vda) whose GPT has the PARTUUID, always;
    - ``initrd``: systemd's initrd mounts ``/dev/disk/by-partuuid/...`` (and ``/dev/disk/by-label/ROOT``),
      a udev link that both disks claim with the same priority: either may win, boot by boot.

    So the gate must follow the device actually mounted on /usr: on vda4 (the unmarked update) it holds
    and then passes, as in healthy-update, and only vda's USR-B gets marked; on vdb4 (the marked slot of
    the second disk) it must not block: piccolod is ready without the harness's release, its verdict is
    ``skipped``, update-engine runs, and vda's unbooted USR-B stays unmarked. The note says which."""
    second = m.copy_disk("second.raw")
    disk.put_partition(second, 4, m.standin.usr("holds"))
    disk.install_update(second, "USR-B")
    disk.set_slot(second, "USR-B", priority=2, tries=0, successful=True)  # marked on the other disk
    before = disk.slots(second)
    m.extra_disks.append(second)
    _update(m, "holds")
    b = m.boot(settle=False)
    expect(b.exit_code is None, f"boot {b.number} ended before userspace")
    usr = _usr_device(m)
    n["/usr"] = usr
    if usr == "vda4":
        _hold_then_pass(m, n, booted=b)
        expect(disk.slots(second) == before, "the second disk's slots changed")
    else:
        expect(usr == "vdb4", f"/usr is {usr or 'nothing'}: neither disk's USR-B")
        t0 = time.monotonic()
        m.wait_ready(guest.GATE_TIMEOUT)  # no release: a marked slot is never gated
        n["ready unreleased"] = time.monotonic() - t0
        m.settle()
        _code, doc = m.health()
        verdict = doc.get("startup_health_check")
        expect(verdict == "skipped", f"startup_health_check {verdict} on the marked slot")
        ue = m.sh("systemctl is-active update-engine.service").out.strip()
        expect(ue == "active", f"update-engine is {ue} on the marked slot")
        s = _slot(m, "USR-B")  # vda's: the update nobody booted
        expect(not s.successful, f"vda's USR-B was marked though vdb's was booted ({s.bits()})")
    m.poweroff()
    if usr == "vdb4":
        after = disk.slots(second)
        expect(
            after["USR-B"].successful,
            f"the second disk's marked USR-B lost its mark: {after['USR-B'].bits()}",
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Step
    minutes: float  # about how long under TCG: the runner starts the long ones first


SCENARIOS = (
    Scenario("healthy-boot", "piccolod active, health 200 with the TPM, metrics", healthy_boot, 2),
    Scenario("docker-stopped", "docker stopped: not 200 within threshold x interval", docker_stopped, 2.5),
    Scenario(
        "healthy-update", "USR-B unmarked past update-engine's 45 s, marked after the pass", healthy_update, 5
    ),
    Scenario("broken-update", "a required check fails on USR-B: one reboot, back on USR-A", broken_update, 5),
    Scenario(
        "crash-before-userspace", "USR-B has no /usr: GRUB falls back to USR-A", crash_before_userspace, 2
    ),
    Scenario("two-disks", "a second disk with a marked USR-B: the gate follows the booted one", two_disks, 4),
)
BY_NAME = {s.name: s for s in SCENARIOS}
