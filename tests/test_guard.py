"""The base image's guard script on real GPT images (sgdisk-made), run by the real ``sh``.

The guard lets update-engine start at once on a marked slot; anything else (unmarked, or whatever it
cannot read or verify: a damaged header or table, a PARTUUID not on the disk, a partition that is not a
Flatcar /usr slot, a command line without a PARTUUID) waits for piccolod's pass token of this boot and
fails when its wait runs out. docs/boot.md says why that is safe.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from piccolo_build import layout
from piccolo_build.config import load_config
from piccolo_build.overlay import layout_content
from tests.builder_helpers import DEFAULT_CONFIG
from tests.fixtures.gptdisk import USR_A, USR_B, cmdline_for, corrupt, entries, gptprio_next, install_update

BOOT_ID = "5c2a2f0e-6a7b-4c39-9d1e-0a1b2c3d4e5f"


@pytest.fixture(scope="module")
def guard_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    entry = next(e for e in layout.LAYOUT if e.dest == layout.GUARD_SCRIPT)
    path = tmp_path_factory.mktemp("guard") / "piccolod-guard"
    path.write_bytes(layout_content(load_config(DEFAULT_CONFIG), entry))
    path.chmod(0o755)
    return path


class Guard:
    def __init__(self, script: Path, work: Path, disk: Path | str) -> None:
        self.script, self.work, self.disk = script, work, disk
        (work / "boot_id").write_text(BOOT_ID + "\n")
        self.token = work / "run" / "gate-passed"
        self.token.parent.mkdir(exist_ok=True)

    def cmdline(self, text: str) -> None:
        (self.work / "cmdline").write_text(text)

    def run(
        self, wait: float = 1.0, extra: dict[str, str] | None = None
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PICCOLOD_GUARD_CMDLINE": str(self.work / "cmdline"),
            "PICCOLOD_GUARD_DISK": str(self.disk),
            "PICCOLOD_GUARD_TOKEN": str(self.token),
            "PICCOLOD_GUARD_WAIT_SECONDS": f"{wait:g}",
            "PICCOLOD_GUARD_BOOT_ID": str(self.work / "boot_id"),
            "PICCOLOD_GUARD_POLL_SECONDS": "0.05",
            **(extra or {}),
        }
        t0 = time.monotonic()
        argv = ["sh", str(self.script)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
        return done, time.monotonic() - t0


@pytest.fixture
def guard(guard_script: Path, tmp_path: Path, flatcar_disk: Path) -> Guard:
    return Guard(guard_script, tmp_path, flatcar_disk)


def test_a_marked_slot_lets_update_engine_go_at_once(guard: Guard) -> None:
    guard.cmdline(cmdline_for(gptprio_next(Path(guard.disk))))  # USR-A, marked
    done, took = guard.run(wait=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "marked good: update-engine may start" in done.stdout and took < 5


def test_an_unmarked_slot_waits_and_fails_without_a_pass(guard: Guard) -> None:
    install_update(Path(guard.disk), USR_A)
    guard.cmdline(cmdline_for(gptprio_next(Path(guard.disk))))  # USR-B, unmarked
    done, took = guard.run(wait=1)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the booted slot is unmarked" in done.stdout and "no pass from piccolod within 1s" in done.stdout
    assert 1.0 <= took < 5


def test_a_pass_of_this_boot_opens_it(guard: Guard) -> None:
    install_update(Path(guard.disk), USR_A)
    guard.cmdline(cmdline_for(gptprio_next(Path(guard.disk))))

    def pass_later() -> None:
        time.sleep(0.5)
        tmp = guard.token.with_suffix(".tmp")
        tmp.write_text(BOOT_ID + "\n")
        tmp.replace(guard.token)

    t = threading.Thread(target=pass_later)
    t.start()
    done, took = guard.run(wait=20)
    t.join()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate passed in this boot" in done.stdout and 0.5 <= took < 5


def test_a_token_of_another_boot_does_not(guard: Guard) -> None:
    install_update(Path(guard.disk), USR_A)
    guard.cmdline(cmdline_for(gptprio_next(Path(guard.disk))))
    guard.token.write_text("another-boot\n")
    done, _ = guard.run(wait=0.5)
    assert done.returncode == 1


@pytest.mark.parametrize("damage", ["primary-header", "primary-entries", "backup-header", "backup-entries"])
def test_a_damaged_table_is_not_marked_even_when_it_says_so(guard: Guard, damage: str) -> None:
    guard.cmdline(cmdline_for(gptprio_next(Path(guard.disk))))  # USR-A, marked...
    corrupt(Path(guard.disk), damage)  # ...on a table sgdisk warns about
    done, _ = guard.run(wait=0.3)
    assert done.returncode == 1, done.stdout
    assert "said:" in done.stdout and "the booted slot is unknown" in done.stdout


def test_a_grown_disk_is_still_read(guard: Guard) -> None:
    """The backup table no longer at the end of the disk (an image written to a larger disk) is benign."""
    guard.cmdline(cmdline_for(gptprio_next(Path(guard.disk))))
    with Path(guard.disk).open("r+b") as f:
        f.truncate(Path(guard.disk).stat().st_size * 2)
    done, _ = guard.run(wait=30)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize(
    ("cmdline", "why"),
    [
        ("console=ttyS0 mount.usr=/dev/mapper/usr\n", "no mount.usr=, verity.usr= or usr= with a PARTUUID"),
        ("mount.usr=PARTUUID=not-a-uuid\n", "no mount.usr=, verity.usr= or usr= with a PARTUUID"),
        ("mount.usr=PARTUUID=00000000-0000-4000-8000-000000000000\n", "no partition with PARTUUID"),
        ("efi\n", "is of type"),
    ],
)
def test_what_cannot_be_verified_is_not_marked(guard: Guard, cmdline: str, why: str) -> None:
    if cmdline == "efi\n":  # a partition that exists but is not a Flatcar /usr slot
        efi = next(e for e in entries(Path(guard.disk)) if e.number == 1)
        cmdline = f"mount.usr=PARTUUID={efi.partuuid}\n"
    guard.cmdline(cmdline)
    done, _ = guard.run(wait=0.3)
    assert done.returncode == 1 and why in done.stdout, done.stdout


@pytest.mark.parametrize(
    "form",
    [
        "mount.usr=PARTUUID={u}",
        "mount.usr=/dev/mapper/usr verity.usr=PARTUUID={u}",
        'usr="PARTUUID={U}"',
        "usr=/dev/disk/by-partuuid/{u}",
        "mount.usr=PARTUUID=00000000-0000-4000-8000-000000000000 mount.usr=PARTUUID={u}",  # the last counts
    ],
)
def test_command_line_forms(guard: Guard, form: str) -> None:
    guard.cmdline("BOOT_IMAGE=/flatcar/vmlinuz-a " + form.format(u=USR_A, U=USR_A.upper()) + " ro\n")
    done, _ = guard.run(wait=0.3)
    assert done.returncode == 0, done.stdout


def test_disk_auto_finds_the_disk_through_the_udev_link_and_sysfs(
    guard_script: Path, tmp_path: Path, flatcar_disk: Path
) -> None:
    """``disk: auto``: /dev/disk/by-partuuid/<uuid> -> the partition, its parent in sysfs -> the disk
    (a tree laid out like the kernel's and udev's, with the image as the disk)."""
    dev, sys_ = tmp_path / "dev", tmp_path / "sys"
    (dev / "disk/by-partuuid").mkdir(parents=True)
    (dev / "vda").symlink_to(flatcar_disk)
    (dev / "vda3").write_text("")
    (dev / "disk/by-partuuid" / USR_A).symlink_to(dev / "vda3")
    disk = sys_ / "devices/pci0000:00/virtio1/block/vda"
    (disk / "vda3").mkdir(parents=True)
    (disk / "dev").write_text("254:0\n")
    (disk / "vda3/partition").write_text("3\n")
    (sys_ / "class/block").mkdir(parents=True)
    (sys_ / "class/block/vda3").symlink_to(disk / "vda3")
    guard = Guard(guard_script, tmp_path, "auto")
    guard.cmdline(cmdline_for(USR_A))
    extra = {"PICCOLOD_GUARD_DEV": str(dev), "PICCOLOD_GUARD_SYS": str(sys_)}
    done, _ = guard.run(wait=0.5, extra=extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"on {dev / 'vda'}: attribute flags" in done.stdout
    guard.cmdline(cmdline_for(USR_B))  # no udev link for USR-B, and blkid knows no such disk
    done, _ = guard.run(wait=0.3, extra=extra)
    assert done.returncode == 1 and f"no disk holds PARTUUID {USR_B.upper()}" in done.stdout, done.stdout
