"""The initrd of the ``initrd`` boot model: a systemd initrd made by dracut (as Flatcar's own initrd is),
run inside the sid package tree with ``systemd-nspawn --volatile=overlay`` (the tree stays unchanged,
nothing is mounted on the host) with a fixed, minimal module set and no host-only detection.

What it does at boot, all of it upstream systemd: udev makes ``/dev/disk/by-label/ROOT`` and
``/dev/disk/by-partuuid/...``; ``systemd-fstab-generator`` turns ``root=LABEL=ROOT`` and
``mount.usr=PARTUUID=...`` into the ``/sysroot`` and ``/sysroot/usr`` mounts, as on Flatcar;
``systemd-sysext-sysroot.service`` (systemd 260 and later; dracut's ``systemd-sysext`` module installs and
enables it) merges ``/sysroot/var/lib/extensions/piccolod.raw`` into ``/sysroot/usr`` before the switch
to the real root, so the real root's PID 1 sees piccolod.service in its first transaction.

Ours, added with ``--include``:

- ``emergency.service`` replaced: when the initrd fails it does not wait in a shell. Flatcar's initrd
  (the ``emergency-timeout`` dracut module of flatcar/bootengine) offers the emergency shell and reboots
  when nobody presses Enter within five minutes, so that GRUB can fall back to the other ``/usr`` after
  a bad update; the stand-in reboots at once. When ``/usr`` is not mounted it prints
  :data:`piccolo_build.vm.initrd.USR_FAIL_MARK`, the line the ``crash-before-userspace`` scenario looks
  for on the console, as the busybox initrd does.
- a unit that answers the KVM probe (``piccolo_vm.probe``: print :data:`~piccolo_build.vm.initrd.PROBE_MARK`
  and power off), so :func:`piccolo_build.vm.qemu.choose_accel` can probe with either initrd.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from piccolo_build.run import run
from piccolo_build.vm.initrd import PROBE_MARK, USR_FAIL_MARK
from piccolo_build.vm.kernel import Kernel
from piccolo_build.vm.tools import need

# dracut modules, exactly these and what they depend on (no host-only detection)
DRACUT_MODULES = (
    "systemd-initrd",
    "systemd-udevd",
    "systemd-journald",
    "systemd-sysext",
    "udev-rules",
    "base",
)
# kernel modules, exactly these and their dependencies: the disk, its file systems, and what the
# sysext merge needs (a loop device for the image file, squashfs inside it, overlayfs to merge)
DRIVERS = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic", "squashfs", "loop", "overlay")
SYSROOT_MERGE = "systemd-sysext-sysroot.service"
FAILED_SCRIPT = "/usr/lib/piccolo-vm/initrd-failed"

FAILED = f"""#!/bin/sh
# piccolo-vm: a failed initrd reboots at once (the harness then plays GRUB again)
if findmnt -n /sysroot/usr >/dev/null || findmnt -n /sysusr/usr >/dev/null; then
  echo "piccolo-vm: the initrd failed with /usr mounted: rebooting" >/dev/console
else
  echo "{USR_FAIL_MARK} (systemd initrd): rebooting" >/dev/console
fi
sleep 1
exec systemctl --force reboot
"""

EMERGENCY = f"""\
[Unit]
Description=piccolo-vm: a failed initrd reboots instead of waiting in a shell
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart={FAILED_SCRIPT}
"""

PROBE = f"""\
[Unit]
Description=piccolo-vm: answer the KVM probe
DefaultDependencies=no
ConditionKernelCommandLine=piccolo_vm.probe

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{PROBE_MARK}" >/dev/console; sleep 1'
ExecStart=systemctl --force --force poweroff
"""


def _extra(where: Path) -> Path:
    """The tree dracut copies into the initrd (``--include``)."""
    units = where / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "emergency.service").write_text(EMERGENCY)
    (units / "piccolo-vm-probe.service").write_text(PROBE)
    (units / "sysinit.target.wants").mkdir()
    (units / "sysinit.target.wants/piccolo-vm-probe.service").symlink_to("../piccolo-vm-probe.service")
    script = where / FAILED_SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_text(FAILED)
    script.chmod(0o755)
    return where


def build(tree: Path, kernel: Kernel, dest: Path) -> Path:
    """Make the initrd from the package ``tree`` (left unchanged) for ``kernel`` into ``dest``."""
    work = Path(tempfile.mkdtemp(prefix="dracut.", dir=dest.parent))
    try:
        extra = _extra(work / "extra")
        out = work / "out"
        out.mkdir()
        inside = "/var/tmp/piccolo-vm"  # noqa: S108 - inside the container; its /tmp is a fresh tmpfs
        env = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}  # as the boot rig's nspawn machines run
        run(
            [
                need("systemd-nspawn"), "--quiet", "--register=no", "--keep-unit", "--private-network",
                "--volatile=overlay", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
                f"--directory={tree}",
                f"--bind-ro={kernel.modules}:/usr/lib/modules/{kernel.version}",
                f"--bind-ro={extra}:{inside}/extra", f"--bind={out}:{inside}/out",
                "--pipe", "dracut", "--quiet", "--force", "--no-hostonly", "--no-early-microcode",
                "--no-compress", "--reproducible", "--kver", kernel.version,
                "--modules", " ".join(DRACUT_MODULES), "--drivers", " ".join(DRIVERS),
                "--include", f"{inside}/extra", "/",
                f"{inside}/out/initrd.img",
            ],
            env=env,
        )  # fmt: skip
        shutil.move(out / "initrd.img", dest)
        dest.chmod(0o644)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
