"""``vm-test --image DIR``: the same checks around a real Flatcar ``qemu_uefi`` image, prepared the way
Flatcar's kola prepares one, never with the generated ``flatcar_production_qemu_uefi.sh`` (it listens on
every interface and writes to its image):

- a qcow2 overlay per VM over the image (``qemu-img create -b``), so the image is never written;
- a copy of the UEFI variable store per VM (``efi_vars``), the firmware code read-only;
- an Ignition config through ``-fw_cfg name=opt/org.flatcar-linux/config`` (where Flatcar's Ignition
  reads it on QEMU): an SSH key made for this run for user ``core``, ``locksmithd`` masked so only the
  test reboots the machine; update-engine stays, it is under test;
- SSH forwarded from a random port on 127.0.0.1 only; the serial console to a file;
- swtpm as a ``tpm-crb`` device, as on the stand-in.

This path has not met a real image yet (none can be built on the machines these tests run on): the
command line, the Ignition document and the overlay are what the tests check.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from piccolo_build.errors import PiccoloError, StepFailed
from piccolo_build.run import Background, run, spawn
from piccolo_build.vm import qemu
from piccolo_build.vm.machine import BAD_LINES, expect
from piccolo_build.vm.tools import need

IMAGE_NAMES = ("flatcar_production_qemu_uefi_image.img", "flatcar_production_qemu_uefi_image.qcow2")
CODE_NAMES = ("flatcar_production_qemu_uefi_efi_code.qcow2", "flatcar_production_qemu_uefi_efi_code.fd")
VARS_NAMES = ("flatcar_production_qemu_uefi_efi_vars.qcow2", "flatcar_production_qemu_uefi_efi_vars.fd")
IGNITION_KEY = "opt/org.flatcar-linux/config"
IGNITION_VERSION = "3.3.0"
HEALTH_URL = "http://127.0.0.1:8080/api/v1/system/health"


@dataclass(frozen=True)
class Artefacts:
    image: Path
    efi_code: Path
    efi_vars: Path


def _one(where: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (where / name).is_file():
            return where / name
    raise PiccoloError(
        f"{where}: no {what} ({' or '.join(names)})",
        hint="--image takes the directory of a qemu_uefi build (image_to_vm.sh --format=qemu_uefi)",
    )


def find_artefacts(where: Path, option: str = "--image") -> Artefacts:
    if not where.is_dir():
        raise PiccoloError(f"{option} {where}: not a directory")
    return Artefacts(
        _one(where, IMAGE_NAMES, "image"),
        _one(where, CODE_NAMES, "efi_code"),
        _one(where, VARS_NAMES, "efi_vars"),
    )


def fmt(path: Path) -> str:
    """QEMU's format name of an artefact: ``qcow2`` by its magic, else ``raw``."""
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def ignition(public_key: str) -> dict[str, object]:
    """The Ignition config of a test VM: the run's SSH key for ``core``, locksmithd masked."""
    return {
        "ignition": {"version": IGNITION_VERSION},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [public_key.strip()]}]},
        "systemd": {"units": [{"name": "locksmithd.service", "mask": True}]},
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Prepared:
    run_dir: Path
    overlay: Path
    efi_vars: Path
    efi_code: Path
    config: Path
    key: Path
    ssh_port: int


def prepare(art: Artefacts, run_dir: Path) -> Prepared:
    """The per-VM files: overlay, variable store, SSH key, Ignition config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay = run_dir / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    run(
        [
            need("qemu-img"),
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            fmt(art.image),
            "-b",
            art.image.resolve(),
            overlay,
        ]
    )
    efi_vars = run_dir / f"efi_vars{art.efi_vars.suffix}"
    shutil.copyfile(art.efi_vars, efi_vars)
    key = run_dir / "id_ed25519"
    for k in (key, key.with_suffix(".pub")):
        k.unlink(missing_ok=True)
    run([need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "piccolo-vm-test", "-f", key])
    config = run_dir / "ignition.json"
    config.write_text(json.dumps(ignition(key.with_suffix(".pub").read_text()), indent=1) + "\n")
    return Prepared(run_dir, overlay, efi_vars, art.efi_code.resolve(), config, key, free_port())


def argv(p: Prepared, accel: str, swtpm_socket: Path | None, *, memory_mib: int = 2048) -> list[str]:
    """The QEMU command line of a real image's VM."""
    args = [
        need("qemu-system-x86_64"), "-name", "piccolo-vm-image", "-machine", "q35", "-m", str(memory_mib),
        "-smp", "2", "-nodefaults", "-display", "none", *qemu.accel_args(accel),
        "-drive", f"if=pflash,unit=0,readonly=on,format={fmt(p.efi_code)},file={p.efi_code}",
        "-drive", f"if=pflash,unit=1,format={fmt(p.efi_vars)},file={p.efi_vars}",
        "-drive", f"if=virtio,format=qcow2,file={p.overlay}",
        "-fw_cfg", f"name={IGNITION_KEY},file={p.config}",
        "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{p.ssh_port}-:22",
        "-serial", f"file:{p.run_dir / 'console.log'}",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    if swtpm_socket is not None:
        args += ["-chardev", f"socket,id=chrtpm,path={swtpm_socket}",
                 "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"]  # fmt: skip
    return args


def ssh_options(p: Prepared) -> list[str]:
    """The options of every ssh and scp to a test VM: the run's key only, no host key kept (every VM is
    new), never a prompt."""
    return [
        "-i", str(p.key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def ssh_argv(p: Prepared, command: str) -> list[str]:
    return [need("ssh"), *ssh_options(p), "-p", str(p.ssh_port), "core@127.0.0.1", command]


def scp_argv(p: Prepared, files: Sequence[Path], dest: str) -> list[str]:
    """Copy ``files`` into the directory ``dest`` of the VM (scp's SFTP protocol, the default since
    OpenSSH 9)."""
    return [need("scp"), *ssh_options(p), "-P", str(p.ssh_port), *map(str, files), f"core@127.0.0.1:{dest}/"]


def wait_ssh(p: Prepared, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if run(ssh_argv(p, "true"), check=False, timeout=15).returncode == 0:
                return time.monotonic() - t0
        except StepFailed:  # sshd accepted but did not finish the handshake in time: early boot
            pass
        time.sleep(2)
    raise PiccoloError(
        f"no SSH on 127.0.0.1:{p.ssh_port} after {timeout:g}s (console: {p.run_dir}/console.log)"
    )


@contextlib.contextmanager
def booted(art: Artefacts, run_dir: Path, accel: str) -> Iterator[tuple[Prepared, Background]]:
    """A VM of ``art`` with its swtpm, started (not yet reachable); both stopped on the way out."""
    p = prepare(art, run_dir)
    state = run_dir / "tpm"
    state.mkdir(exist_ok=True)
    sock = run_dir / "swtpm.sock"
    sock.unlink(missing_ok=True)
    tpm = spawn([need("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state}",
                 "--ctrl", f"type=unixio,path={sock}", "--terminate"], log=run_dir / "swtpm.log")  # fmt: skip
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    vm = spawn(argv(p, accel, sock), log=run_dir / "qemu.log")
    try:
        yield p, vm
    finally:
        vm.stop(5)
        tpm.stop(2)


def kola_findings(sh: Callable[[str], str], console: str) -> list[str]:
    """What kola fails a boot for: not ``running``, failed units, and panics, "Dependency failed",
    ordering cycles or emergency shells on the console (this boot's part) or in this boot's journal."""
    found = []
    state = sh("systemctl is-system-running --wait").strip()
    if state != "running":
        found.append(f"is-system-running: {state or 'nothing'}")
    failed = sh("systemctl list-units --failed --no-legend --plain").strip()
    if failed:
        found.append(f"failed units: {' / '.join(failed.splitlines())}")
    for where, text in (("console", console), ("journal", sh("journalctl -b -o cat --no-pager"))):
        found += [f"{where}: {ln.strip()[:200]}" for ln in text.splitlines() if BAD_LINES.search(ln)][:3]
    return found


def healthy_boot(art: Artefacts, run_dir: Path, accel: str, say: Callable[[str], None]) -> dict[str, str]:
    """The healthy-boot scenario on the real image over SSH: system running, no failed units, no kola
    findings, piccolod active and its health endpoint 200. Raises :class:`Failed`."""
    with booted(art, run_dir, accel) as (p, vm):
        say(f"image: booting under {accel}, SSH on 127.0.0.1:{p.ssh_port}")
        notes = {"ssh": f"{wait_ssh(p, 600 if accel == 'tcg' else 180):.0f}s"}

        def sh(command: str) -> str:
            return run(ssh_argv(p, command), check=False, timeout=300).stdout

        found = kola_findings(sh, (run_dir / "console.log").read_text(errors="replace"))
        expect(not found, "; ".join(found))
        expect(sh("systemctl is-active piccolod.service").strip() == "active", "piccolod is not active")
        code = sh(f"curl -s -o /dev/null -w '%{{http_code}}' {HEALTH_URL}").strip()
        expect(code == "200", f"GET /api/v1/system/health: {code}")
        sh("sudo systemctl poweroff")
        vm.wait(60)
        return notes
