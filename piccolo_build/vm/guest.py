"""What the stand-in machine runs: a Debian userspace of the boot model's suite (trixie: systemd 257, the
version Flatcar stable ships; sid: the newest systemd Debian has, for the models that merge in the initrd)
made to look like Flatcar where Piccolo OS can see it, and the files that stand in for Flatcar's.

:func:`debootstrap` makes a suite's package tree once (keyed on :func:`packages`); :func:`configure` turns
a copy of it into the machine: the Flatcar ``os-release`` (``ID=flatcar``, ``SYSEXT_LEVEL=1.0``, so the
piccolod sysext merges), the staged base-image files in ``/usr``, the update-engine stand-in, the
administrator's policy of the VM, the piccolod sysext image in ``/var/lib/extensions``, and Debian's
housekeeping masked (``e2scrub_reap`` alone costs 12 s under TCG). Docker is installed but not enabled:
a scenario that needs it adds ``systemd.wants=docker.service`` to the kernel command line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from piccolo_build.run import run
from piccolo_build.vm.models import Model
from piccolo_build.vm.tools import need

MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "util-linux", "mawk", "gdisk", "cgpt", "e2fsprogs",
    "qemu-guest-agent", "python3", "python3-yaml", "python3-tpm2-pytss", "docker.io",
    "python3-ply",  # pycparser needs it through virtual packages, which debootstrap does not resolve
    # the tss group and the udev rule giving it /dev/tpmrm0, as Flatcar has them: trixie's libtss2 pulls
    # it in, sid's no longer does (piccolod.service then fails at SupplementaryGroups=tss)
    "tpm-udev",
)  # fmt: skip
# What a suite needs beyond PACKAGES. sid: dracut makes the initrd model's initrd from this very tree
# (dracut-core: the tool without Debian's kernel hooks), and dracut's systemd-sysext module depends on
# its systemd-veritysetup module, whose binaries Debian ships in systemd-cryptsetup.
SUITE_PACKAGES = {"trixie": (), "sid": ("dracut-core", "systemd-cryptsetup")}
DOCKER_UNITS = ("docker.service", "docker.socket", "containerd.service")
MASKED = (
    "e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer", "fstrim.timer", "getty@tty1.service", "systemd-pstore.service",
)  # fmt: skip
UE_DELAY = 45  # update_engine marks the booted slot 45 s after it starts
LEVER_DIR = "/usr/lib/piccolo-vm"  # marker files a slot may carry (the harness writes them into USR-B)
GATE_FAILS = f"{LEVER_DIR}/gate-fails"
GATE_HOLDS = f"{LEVER_DIR}/gate-holds"
RELEASE = "/run/piccolo-vm-release"  # the harness lets a held gate pass by creating this
CHECK_INTERVAL = 5
FAILURE_THRESHOLD = 2
GATE_TIMEOUT = 120  # s; under TCG on a busy host a gate attempt (the TPM's among them) takes 5-10 s

OS_RELEASE = """\
NAME="Flatcar Container Linux by Kinvolk"
ID=flatcar
ID_LIKE=coreos
VERSION=4593.2.5
VERSION_ID=4593.2.5
BUILD_ID=piccolo-vm-standin
SYSEXT_LEVEL=1.0
PRETTY_NAME="Flatcar stand-in (Debian __SUITE__ userspace, boot model __MODEL__, piccolo-build vm-test)"
"""

# The update-engine stand-in: only the part of update_engine under test, the boot flag. It finds the
# booted slot as rootdev does (the device of the /usr mount, not a name) and marks it like
# flatcar-setgoodroot: successful=1, tries=0, top priority, the other slot below it.
UPDATE_ENGINE = r"""#!/bin/sh
set -eu
delay=__DELAY__
for w in $(cat /proc/cmdline); do case $w in piccolo_vm.ue_delay=*) delay=${w#*=} ;; esac; done
echo "update-engine stand-in: marking the booted slot in ${delay}s"
sleep "$delay"
majmin=$(awk '$5 == "/usr" { for (i = 7; $i != "-"; i++) ;
  if ($(i + 1) != "overlay") { print $3; exit } }' /proc/self/mountinfo)
sys=$(readlink -f "/sys/dev/block/$majmin")
n=$(cat "$sys/partition")
disk=/dev/$(basename "$(dirname "$sys")")
for other in 3 4; do
  [ "$other" = "$n" ] && continue
  [ "$(cgpt show -i "$other" -P "$disk")" -gt 0 ] && cgpt add -i "$other" -P 1 "$disk"
done
cgpt add -i "$n" -S 1 -T 0 -P 2 "$disk"
echo "update-engine stand-in: marked partition $n of $disk successful"
exec sleep infinity
"""

UPDATE_ENGINE_UNIT = """\
[Unit]
Description=update-engine stand-in (marks the booted slot like flatcar-setgoodroot)

[Service]
ExecStart=/usr/lib/piccolo-vm/update-engine
"""

# A required check the harness steers per slot: see GATE_FAILS, GATE_HOLDS and RELEASE.
LEVER = f"""#!/bin/sh
if [ -e {GATE_FAILS} ]; then echo "this slot is broken on purpose ({GATE_FAILS})"; exit 1; fi
if [ -e {GATE_HOLDS} ] && [ ! -e {RELEASE} ]; then echo "held by the harness until {RELEASE}"; exit 1; fi
echo ok
"""

POLICY = f"""\
# The VM's administrator policy (piccolo-build vm-test): short intervals, docker the one optional
# component (no network in the VM), a gate deadline the scenarios can wait out.
health_policy:
  startup:
    timeout_seconds: {GATE_TIMEOUT}
    required_components: [tpm, storage, api]
    optional_components: [docker]
  runtime:
    check_interval_seconds: {CHECK_INTERVAL}
    failure_threshold: {FAILURE_THRESHOLD}
  rollback:
    reboot_grace_seconds: 2
"""


def packages(suite: str) -> tuple[str, ...]:
    return PACKAGES + SUITE_PACKAGES[suite]


def debootstrap(cache: Path, suite: str) -> Path:
    """The package tree of ``suite`` (``cache/tree-SUITE``), made once and again only when its
    :func:`packages` change."""
    shutil.rmtree(cache / "tree", ignore_errors=True)  # the one tree of before there were suites
    root = cache / f"tree-{suite}"
    want = f"{suite} {MIRROR} {','.join(packages(suite))}"
    stamp = root / ".piccolo-vm-tree"
    if stamp.exists() and stamp.read_text() == want:
        return root
    tmp = cache / f"tree-{suite}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    include = f"--include={','.join(packages(suite))}"
    run([need("debootstrap"), "--variant=minbase", include, suite, tmp, MIRROR])
    (tmp / stamp.name).write_text(want)
    tmp.rename(root)
    return root


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def configure(root: Path, *, model: Model, modules: Path, base: Path, sysext_raw: Path) -> None:
    """Turn ``root`` (a copy of the package tree of ``model``'s suite) into the stand-in machine."""
    usr = root / "usr"
    _write(
        usr / "lib/os-release", OS_RELEASE.replace("__SUITE__", model.suite).replace("__MODEL__", model.name)
    )
    shutil.rmtree(usr / "lib/modules", ignore_errors=True)
    shutil.copytree(modules, usr / "lib/modules" / modules.name, symlinks=True)
    shutil.copytree(base / "usr", usr, symlinks=True, dirs_exist_ok=True)
    _write(usr / "lib/piccolo-vm/update-engine", UPDATE_ENGINE.replace("__DELAY__", str(UE_DELAY)), 0o755)
    _write(usr / "lib/systemd/system/update-engine.service", UPDATE_ENGINE_UNIT)
    _link(
        usr / "lib/systemd/system/multi-user.target.wants/update-engine.service", "../update-engine.service"
    )
    etc = root / "etc"
    _write(etc / "hostname", "piccolo-vm\n")
    _write(etc / "machine-id", "5f0c2a5a0e6a4c1e9d3b7a8c6e4f2d10\n")
    _write(etc / "fstab", "# / and /usr are mounted by the initrd\n")
    _write(etc / "modprobe.d/piccolo-vm.conf", "blacklist floppy\nblacklist pcspkr\nblacklist kvm_amd\n")
    wants = etc / "systemd/system"
    for unit in DOCKER_UNITS:
        for found in wants.glob(f"*.wants/{unit}"):
            found.unlink()
    for unit in MASKED:
        for found in wants.glob(f"*.wants/{unit}"):
            found.unlink()
        _link(wants / unit, "/dev/null")
    # enabled in both models: where the initrd merged already (systemd 260 and later), its refresh finds
    # nothing changed and leaves the merge alone, as on Flatcar beta and alpha
    _link(
        wants / "sysinit.target.wants/systemd-sysext.service",
        "/usr/lib/systemd/system/systemd-sysext.service",
    )
    _link(wants / "default.target", "/usr/lib/systemd/system/multi-user.target")
    # /etc and /var as new as /usr: no first-boot ldconfig, catalog, hwdb rebuilds (ConditionNeedsUpdate)
    for where in (etc, root / "var"):
        _write(where / ".updated", "# written by piccolo-build vm-test: /usr is not newer than this\n")
    _write(etc / "piccolod/health-policy.yaml", POLICY)
    _write(etc / "piccolod/required.d/vm-lever", LEVER, 0o755)
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    ext = root / "var/lib/extensions"
    ext.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sysext_raw, ext / sysext_raw.name)
    run([need("chroot"), root, "passwd", "-d", "root"])
