"""A stand-in machine across its boots: its own copy of the disk, GRUB's choice before every boot, and
after every boot the checks Flatcar's kola makes: ``systemctl is-system-running`` polled, no failed
units, the console and this boot's journal free of panics, "Dependency failed", ordering cycles and
emergency shells, and a new ``boot_id`` (a reboot really happened)."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from piccolo_build.vm import disk, qemu
from piccolo_build.vm.qga import Qga, QgaError, Result
from piccolo_build.vm.standin import Standin

BOOT_SECONDS = 240.0  # to the guest agent, under TCG; generous, a stall still ends
SETTLE_SECONDS = 240.0
PROGRESS_EVERY = 10.0
# What kola's journal and console checks look for, in our words.
BAD_LINES = re.compile(
    r"Kernel panic|kernel BUG at|Oops: |WARNING: CPU: |invalid opcode|Dependency failed for|"
    r"Found ordering cycle|ordering cycle|emergency mode|Emergency Shell|Out of memory: Kill"
)


# How the journal shows where the piccolod sysext was merged (systemd-sysext's own lines, PID 1's).
SWITCH_ROOT = re.compile(r"systemd\[1\]: Switching root\.")
MERGED_SYSROOT = re.compile(r"Merged extensions into '/sysroot/usr'")
MERGED_USR = re.compile(r"Merged extensions into '/usr'")
RELOAD = re.compile(r"systemd\[1\]: Reloading")
STARTING_AGENT = re.compile(r"systemd\[1\]: Starting piccolod\.service")


def initrd_merge_problems(journal: str) -> list[str]:
    """What in one boot's journal (``journalctl -b -o short-monotonic``, the initrd's part included) says
    the piccolod sysext was not merged in the initrd: the initrd model's per-boot check. It holds when
    the initrd merged into ``/sysroot/usr`` before the switch to the real root, nothing merged again after
    it, and the real root's PID 1 started piccolod.service before any daemon-reload (so the unit was in
    its first transaction, not pulled in late as ensure-sysext.service did)."""
    lines = journal.splitlines()
    switch = next((i for i, ln in enumerate(lines) if SWITCH_ROOT.search(ln)), None)
    if switch is None:
        return ["no switch from the initrd in the journal"]
    found = []
    if not any(MERGED_SYSROOT.search(ln) for ln in lines[:switch]):
        found.append("the initrd did not merge the sysext into /sysroot/usr before switch-root")
    after = lines[switch:]
    if any(MERGED_USR.search(ln) for ln in after):
        found.append("the sysext was merged (again) after switch-root")
    start = next((i for i, ln in enumerate(after) if STARTING_AGENT.search(ln)), None)
    if start is None:
        found.append("PID 1 never started piccolod.service")
    elif any(RELOAD.search(ln) for ln in after[:start]):
        found.append("PID 1 reloaded before it started piccolod.service: not in its first transaction")
    return found


class Failed(Exception):
    """A scenario's expectation did not hold; ``str()`` says which, in one line."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


@dataclass
class Boot:
    number: int
    slot: disk.Slot
    cmdline: str
    agent_seconds: float | None = None  # QEMU start to the guest agent's first answer
    running_seconds: float | None = None  # to is-system-running "running"
    ready_seconds: float | None = None  # kernel start to piccolod active (READY=1), the guest's clock
    boot_id: str = ""
    exit_code: int | None = None  # QEMU's, when the boot ended by itself
    problems: list[str] = field(default_factory=list)


@dataclass
class Machine:
    standin: Standin
    run_dir: Path
    accel: str
    say: Callable[[str], None] = lambda _m: None
    extra_disks: list[Path] = field(default_factory=list)
    boots: list[Boot] = field(default_factory=list)
    vm: qemu.Vm | None = None
    qga: Qga | None = None

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.disk = self.run_dir / "disk.raw"
        disk.sparse_copy(self.standin.disk, self.disk)

    def copy_disk(self, name: str) -> Path:
        """Another copy of the pristine disk, in this machine's run directory."""
        return disk.sparse_copy(self.standin.disk, self.run_dir / name)

    # -- boots -----------------------------------------------------------------------------------
    def boot(self, *, extra: str = "", settle: bool = True) -> Boot:
        """Play GRUB, start QEMU and wait for the guest agent (and with ``settle``, for the system to
        run and the kola checks). A boot that ends by itself before its guest agent answers (a broken
        /usr) is returned with its ``exit_code``."""
        self._end_boot()
        slot = disk.gptprio_next(self.disk)
        number = len(self.boots) + 1
        cmdline = f"mount.usr=PARTUUID={slot.partuuid} {qemu.BASE_CMDLINE} {extra}".strip()
        b = Boot(number, slot, cmdline)
        self.boots.append(b)
        spec = qemu.Spec(self.run_dir, self.standin.vmlinuz, self.standin.initrd, cmdline,
                         [self.disk, *self.extra_disks], accel=self.accel)  # fmt: skip
        self.vm = qemu.Vm(spec).start()
        self.qga = Qga(spec.qga_socket)
        self.say(f"boot {number}: {slot.label} ({slot.bits()} before GRUB) under {self.accel}")
        t0 = self.vm.started
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if not self.vm.running():
                b.exit_code = self.vm.wait_exit(5)
                self.say(
                    f"boot {number}: QEMU exited ({b.exit_code}) after {now - t0:.0f}s, before userspace"
                )
                return b
            if now - t0 > BOOT_SECONDS:
                raise Failed(f"boot {number} ({slot.label}): no guest agent after {BOOT_SECONDS:g}s")
            if now - last >= PROGRESS_EVERY:
                self.say(f"boot {number}: booting {slot.label}, {now - t0:.0f}s")
                last = now
            try:
                self.qga.sync(2)
                break
            except (QgaError, OSError):
                time.sleep(0.5)
        b.agent_seconds = time.monotonic() - t0
        b.boot_id = self.sh("cat /proc/sys/kernel/random/boot_id").out.strip()
        earlier = [x.boot_id for x in self.boots[:-1] if x.boot_id]
        previous = self.run_dir / f"journal-{number - 1}.txt"
        if number > 1 and not previous.exists():  # a boot that ended by itself: its journal, from ROOT
            previous.write_text(self.sh("journalctl -b -1 -o short-monotonic --no-pager", timeout=120).out)
        if b.boot_id in earlier:
            b.problems.append(f"boot {number}: boot_id {b.boot_id} is an earlier boot's: no reboot happened")
        if settle:
            self.settle()
        return b

    @property
    def current(self) -> Boot:
        return self.boots[-1]

    def settle(self) -> Boot:
        """Poll ``systemctl is-system-running`` until it is ``running``, then run the kola checks; any
        finding is a :class:`Failed`."""
        b = self.current
        assert self.vm is not None
        state = ""
        while time.monotonic() - self.vm.started < SETTLE_SECONDS:
            state = self.sh("systemctl is-system-running").out.strip()
            if state in {"running", "degraded", "maintenance", "stopping"}:
                break
            time.sleep(1)
        b.running_seconds = time.monotonic() - self.vm.started
        failed = self.sh("systemctl list-units --failed --no-legend --plain | awk '{print $1}'").out.split()
        if failed:
            b.problems.append(f"boot {b.number}: failed units: {', '.join(failed)}")
        if state != "running":
            b.problems.append(f"boot {b.number}: is-system-running says {state or 'nothing'}")
        b.problems += self.scan()
        if self.standin.model.merges_in_initrd:
            journal = self.sh("journalctl -b -o short-monotonic --no-pager", timeout=120).out
            b.problems += [f"boot {b.number}: {p}" for p in initrd_merge_problems(journal)]
        self.save_journal()
        expect(not b.problems, "; ".join(b.problems))
        return b

    def scan(self) -> list[str]:
        """Lines of the console and this boot's journal that kola would fail a boot for."""
        found = []
        journal = self.sh("journalctl -b -o cat --no-pager", timeout=120).out
        for where, text in (("console", self.console()), ("journal", journal)):
            for line in text.splitlines():
                if BAD_LINES.search(line):
                    found.append(f"boot {self.current.number} {where}: {line.strip()[:200]}")
        return found[:5]

    def console(self) -> str:
        return self.vm.console_text() if self.vm is not None else ""

    def save_journal(self) -> None:
        try:
            text = self.sh("journalctl -b -o short-monotonic --no-pager", timeout=120).out
        except (QgaError, Failed):
            return
        (self.run_dir / f"journal-{self.current.number}.txt").write_text(text)

    def _end_boot(self) -> None:
        if self.vm is None:
            return
        if self.vm.running():
            self.vm.kill()
        if self.qga is not None:
            self.qga.close()
        console = self.run_dir / "console.log"
        if console.exists() and self.boots:
            console.rename(self.run_dir / f"console-{self.boots[-1].number}.log")
        self.vm = None

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until piccolod.service is active (its READY=1); when it was, in seconds since the guest's
        kernel started (QEMU's own start adds well under a second with -kernel)."""
        assert self.vm is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sh("systemctl is-active piccolod.service").out.strip() == "active":
                # when it became active, on the guest's clock (seconds since its kernel started)
                shown = self.sh(
                    "systemctl show -p ActiveEnterTimestampMonotonic --value piccolod.service"
                ).out
                at = int(shown.strip()) / 1e6 if shown.strip().isdigit() else 0.0
                self.current.ready_seconds = at or time.monotonic() - self.vm.started
                return self.current.ready_seconds
            time.sleep(1)
        raise Failed(f"boot {self.current.number}: piccolod not active after {timeout:g}s")

    def wait_reboot(self, timeout: float = 240.0) -> int:
        """The guest rebooted by itself (QEMU ends with -no-reboot); its exit code."""
        assert self.vm is not None
        t0 = time.monotonic()
        self.save_journal()
        while time.monotonic() - t0 < timeout:
            code = self.vm.wait_exit(PROGRESS_EVERY)
            if code is not None:
                self.current.exit_code = code
                return code
            self.say(
                f"boot {self.current.number}: waiting for the guest to reboot, {time.monotonic() - t0:.0f}s"
            )
        raise Failed(f"boot {self.current.number}: the guest did not reboot within {timeout:g}s")

    def poweroff(self, timeout: float = 60.0) -> None:
        if self.vm is None or not self.vm.running():
            self._end_boot()
            return
        try:
            assert self.qga is not None
            self.qga.shutdown()
        except (QgaError, OSError):
            pass
        self.vm.wait_exit(timeout)
        self._end_boot()

    def close(self) -> None:
        self._end_boot()

    # -- the guest ----------------------------------------------------------------------------------
    def sh(self, script: str, timeout: float = 60.0) -> Result:
        if self.qga is None:
            raise Failed("the machine is not running")
        try:
            return self.qga.sh(script, timeout)
        except QgaError as exc:
            raise Failed(f"boot {self.current.number}: {exc}") from None

    def http(self, path: str) -> tuple[int, str]:
        """GET ``path`` from the agent's API inside the guest: (status, body)."""
        script = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://127.0.0.1:8080{path}', timeout=10)\n"
            "    print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); print(e.read().decode())\n"
            "except OSError as e:\n"
            "    print(0); print(e)\n"
        )
        r = self.sh(f"python3 -c {shlex.quote(script)}")
        first, _, body = r.out.partition("\n")
        try:
            return int(first.strip()), body
        except ValueError:
            return 0, r.out + r.err

    def health(self) -> tuple[int, dict[str, object]]:
        code, body = self.http("/api/v1/system/health")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        return code, doc if isinstance(doc, dict) else {}
