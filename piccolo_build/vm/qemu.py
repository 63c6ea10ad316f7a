"""One QEMU virtual machine of the stand-in, with its swtpm, and the choice of accelerator.

The VM has no network and no display: the serial console goes to a file, commands go through the guest
agent's virtio-serial port, the TPM is a ``swtpm`` behind a ``tpm-crb`` device (the guest's kernel makes
``/dev/tpm0`` and ``/dev/tpmrm0``). With ``-no-reboot`` a reboot of the guest ends QEMU: the harness then
plays GRUB and starts the next boot.

KVM is used only when a probe boot proves it works: on a nested, software hypervisor ``/dev/kvm`` opens
and a Linux guest then stalls in early boot. The probe boots the stand-in's kernel and initrd with
``piccolo_vm.probe``, which prints a line and powers off; without it within :data:`PROBE_SECONDS`, TCG.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from piccolo_build.errors import PiccoloError
from piccolo_build.run import Background, spawn
from piccolo_build.vm import initrd
from piccolo_build.vm.tools import need

PROBE_SECONDS = 20.0
KVM_CPU = "host"
BASE_CMDLINE = (
    "root=LABEL=ROOT rootflags=rw mount.usrflags=ro mount.usrfstype=ext4 console=ttyS0,115200n8 "
    "consoleblank=0 panic=-1 random.trust_cpu=on"
)


@dataclass
class Spec:
    """What one boot is made of."""

    run_dir: Path
    vmlinuz: Path
    initrd: Path
    cmdline: str
    disks: list[Path]
    accel: str = "tcg"
    memory_mib: int = 1536
    cpus: int = 1
    tpm: bool = True
    extra: list[str] = field(default_factory=list)

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def qga_socket(self) -> Path:
        return self.run_dir / "qga.sock"


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", KVM_CPU]
    return ["-accel", "tcg,tb-size=256"]


def argv(spec: Spec, swtpm_socket: Path | None) -> list[str]:
    """The ``qemu-system-x86_64`` command line of a stand-in boot."""
    args = [
        need("qemu-system-x86_64"), "-name", "piccolo-vm", "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
        "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
        "-serial", f"file:{spec.console}",
        *accel_args(spec.accel),
        "-kernel", str(spec.vmlinuz), "-initrd", str(spec.initrd), "-append", spec.cmdline,
        "-device", "virtio-rng-pci",
        "-chardev", f"socket,id=qga0,path={spec.qga_socket},server=on,wait=off",
        "-device", "virtio-serial-pci",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ]  # fmt: skip
    for i, d in enumerate(spec.disks):
        args += ["-drive", f"file={d},format=raw,if=virtio,cache=unsafe,index={i}"]
    if swtpm_socket is not None:
        args += [
            "-chardev", f"socket,id=chrtpm,path={swtpm_socket}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
        ]  # fmt: skip
    return [*args, *spec.extra]


class Vm:
    """A running stand-in VM (and its swtpm)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.qemu: Background | None = None
        self.swtpm: Background | None = None
        self.started = 0.0

    def start(self) -> Vm:
        spec = self.spec
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (spec.console, spec.qga_socket, spec.run_dir / "swtpm.sock"):
            stale.unlink(missing_ok=True)
        sock = None
        if spec.tpm:
            state = spec.run_dir / "tpm"  # kept across the boots of one machine, like a real TPM's NVRAM
            state.mkdir(exist_ok=True)
            sock = spec.run_dir / "swtpm.sock"
            self.swtpm = spawn(
                [need("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state}",
                 "--ctrl", f"type=unixio,path={sock}", "--terminate"],
                log=spec.run_dir / "swtpm.log",
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while not sock.exists():
                if time.monotonic() > deadline or self.swtpm.poll() is not None:
                    raise PiccoloError(f"swtpm did not start: see {spec.run_dir / 'swtpm.log'}")
                time.sleep(0.02)
        (spec.run_dir / "cmdline").write_text(spec.cmdline + "\n")
        self.started = time.monotonic()
        self.qemu = spawn(argv(spec, sock), log=spec.run_dir / "qemu.log")
        return self

    def running(self) -> bool:
        return self.qemu is not None and self.qemu.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        if self.qemu is None:
            return 0
        code = self.qemu.wait(timeout)
        if code is not None:
            self._end_swtpm()
        return code

    def _end_swtpm(self) -> None:
        if self.swtpm is not None:
            self.swtpm.stop(2)
            self.swtpm = None

    def kill(self) -> None:
        if self.qemu is not None:
            self.qemu.stop(3)
        self._end_swtpm()

    def console_text(self) -> str:
        try:
            return self.spec.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""


_chosen: dict[str, str] = {}


def choose_accel(vmlinuz: Path, initrd_img: Path, work: Path, want: str = "auto") -> tuple[str, str]:
    """``(accel, why)``: ``tcg`` or ``kvm``; ``auto`` probes KVM once per process."""
    if want in {"kvm", "tcg"}:
        return want, "asked for"
    if "auto" in _chosen:
        return _chosen["auto"], _chosen["why"]
    accel, why = "tcg", "no usable /dev/kvm"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        spec = Spec(work / "kvm-probe", vmlinuz, initrd_img, "console=ttyS0 panic=-1 piccolo_vm.probe", [],
                    accel="kvm", memory_mib=256, tpm=False)  # fmt: skip
        vm = Vm(spec).start()
        t0 = time.monotonic()
        code = vm.wait_exit(PROBE_SECONDS)
        took = time.monotonic() - t0
        seen = initrd.PROBE_MARK in vm.console_text()
        vm.kill()
        if seen:
            accel, why = "kvm", f"a KVM probe boot took {took:.1f}s"
        elif code is None:
            why = f"/dev/kvm is there, but a probe boot did not finish in {PROBE_SECONDS:g}s (stalled)"
        else:
            why = f"/dev/kvm is there, but QEMU with KVM exited with {code} (see {spec.run_dir}/qemu.log)"
    _chosen.update(auto=accel, why=why)
    return accel, why
