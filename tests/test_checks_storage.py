"""The storage check against real, small file systems (tmpfs and a loop-mounted ext4) filled on purpose."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from piccolod.checks import CHECKS, timeout_for
from piccolod.checks.storage import check_storage, containing_mount, parse_mountinfo
from piccolod.policy import Checks, Component, HealthPolicy, PolicyFile, StorageCheck, Thresholds
from tests.fixtures.daemons import require

pytestmark = [pytest.mark.privileged]


def policy(mounts: list[str], min_free: float = 10.0, max_errors: int = 0) -> PolicyFile:
    return PolicyFile(
        health_policy=HealthPolicy(
            thresholds=Thresholds(min_disk_space_percent=min_free, max_io_errors=max_errors),
            checks=Checks(storage=StorageCheck(mounts=tuple(mounts))),
        )
    )


Mount = Callable[..., Path]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """Mount small file systems under ``tmp_path``; unmount them afterwards."""
    points: list[Path] = []

    def make(kind: str, size_mb: int = 4, name: str | None = None) -> Path:
        point = tmp_path / (name or f"{kind}{len(points)}")
        point.mkdir()
        if kind == "tmpfs":
            argv = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "piccolo-test-tmpfs", str(point)]
        else:
            image = tmp_path / f"{point.name}.img"
            with image.open("wb") as f:
                f.truncate(size_mb << 20)
            mkfs = (
                [require("mkfs.ext4"), "-q", "-m", "0"] if kind == "ext4" else [require("mkfs.btrfs"), "-q"]
            )
            subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
            options = "loop,errors=continue" if kind == "ext4" else "loop"
            argv = ["mount", "-o", options, str(image), str(point)]
        subprocess.run([require("mount"), *argv[1:]], check=True, capture_output=True)
        points.append(point)
        return point

    try:
        yield make
    finally:
        for point in reversed(points):
            subprocess.run(["umount", str(point)], check=False, capture_output=True)


def fill_to(point: Path, free_percent: float) -> None:
    """Write one file so that about ``free_percent`` of the file system stays available."""
    vfs = os.statvfs(point)
    keep = int(vfs.f_blocks * free_percent / 100) * vfs.f_frsize
    size = vfs.f_bavail * vfs.f_frsize - keep
    with (point / "ballast").open("wb") as f:
        f.write(b"\xa5" * size)
        f.flush()
        os.fsync(f.fileno())


def trigger_ext4_error(sysfs_dir: Path) -> None:
    """Raise one ext4 error; the count reaches the superblock (and sysfs) from a kernel work item."""
    counter = sysfs_dir / "errors_count"
    before = int(counter.read_text())
    (sysfs_dir / "trigger_fs_error").write_text("piccolo test\n")
    deadline = time.monotonic() + 10
    while int(counter.read_text()) == before:
        assert time.monotonic() < deadline, f"{counter} stayed at {before}"
        time.sleep(0.01)


def df_free_percent(point: Path) -> float:
    """What df(1) says: available / size of the file system, in percent."""
    out = subprocess.run(
        ["df", "--block-size=1", "--output=size,avail", str(point)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()[1]
    size, avail = (int(v) for v in out.split())
    return round(100 * avail / size, 1)


def test_roomy_tmpfs_passes_and_says_it_has_no_error_counter(mount: Mount) -> None:
    point = mount("tmpfs")
    outcome = check_storage(policy([str(point)]), 5.0)
    assert outcome.healthy, outcome.reason
    entry = outcome.details["mounts"][str(point)]
    assert entry["device"] == "piccolo-test-tmpfs"
    assert entry["fstype"] == "tmpfs"
    assert entry["io_errors"] == 0 and entry["io_error_counters"] == {}
    assert entry["free_space_percent"] == df_free_percent(point) == 100.0
    assert f"no I/O error counter for {point}" in outcome.reason
    assert set(outcome.details) == {"free_space_percent", "io_errors", "mounts"}


def test_filled_tmpfs_below_threshold_fails(mount: Mount) -> None:
    point = mount("tmpfs", size_mb=4)
    fill_to(point, 5.0)
    free = df_free_percent(point)
    assert 3.0 < free < 8.0
    outcome = check_storage(policy([str(point)], min_free=10), 5.0)
    assert not outcome.healthy
    assert outcome.details["free_space_percent"] == free
    assert f"{point}: {free}% free, below 10%" in outcome.reason
    assert check_storage(policy([str(point)], min_free=2), 5.0).healthy


def test_lowest_mount_decides_and_is_reported(mount: Mount) -> None:
    roomy, tight = mount("tmpfs"), mount("tmpfs")
    fill_to(tight, 30.0)
    outcome = check_storage(policy([str(roomy), str(tight)], min_free=20), 5.0)
    assert outcome.healthy, outcome.reason
    assert outcome.details["free_space_percent"] == df_free_percent(tight)
    assert outcome.details["mounts"][str(roomy)]["free_space_percent"] == 100.0
    failing = check_storage(policy([str(roomy), str(tight)], min_free=40), 5.0)
    assert not failing.healthy
    assert str(tight) in failing.reason and str(roomy) not in failing.reason


def test_ext4_errors_count_is_read_and_judged(mount: Mount) -> None:
    point = mount("ext4", size_mb=8)
    outcome = check_storage(policy([str(point)]), 5.0)
    assert outcome.healthy, outcome.reason
    entry = outcome.details["mounts"][str(point)]
    assert entry["fstype"] == "ext4" and entry["device"].startswith("/dev/loop")
    counter = Path(f"/sys/fs/ext4/{Path(entry['device']).name}/errors_count")
    assert entry["io_error_counters"] == {str(counter): 0}
    assert entry["io_errors"] == 0

    # The kernel's own error path (ext4_error via sysfs), as an I/O error would take it.
    trigger_ext4_error(counter.parent)
    assert int(counter.read_text()) == 1
    failing = check_storage(policy([str(point)]), 5.0)
    assert not failing.healthy
    assert failing.details["io_errors"] == 1
    assert f"{point}: 1 I/O errors, more than 0" in failing.reason
    assert check_storage(policy([str(point)], max_errors=1), 5.0).healthy


def test_btrfs_device_error_stats_count_a_real_checksum_failure(mount: Mount, tmp_path: Path) -> None:
    point = mount("btrfs", size_mb=128)
    pattern = b"piccolo: corrupt this block\n"
    (point / "victim").write_bytes(pattern * 4096)  # 112 KiB: a data extent, not inlined in metadata
    outcome = check_storage(policy([str(point)]), 5.0)
    assert outcome.healthy, outcome.reason
    entry = outcome.details["mounts"][str(point)]
    assert entry["fstype"] == "btrfs"
    [(counter, value)] = entry["io_error_counters"].items()
    assert value == 0
    assert counter.startswith("/sys/fs/btrfs/") and counter.endswith("/devinfo/1/error_stats")

    # Flip bytes of the file's data on the backing image; reading it back fails its checksum (EIO).
    subprocess.run(["umount", str(point)], check=True)
    image = tmp_path / f"{point.name}.img"
    with image.open("r+b") as f:
        data = f.read()
        f.seek(data.index(pattern))
        f.write(b"X" * len(pattern))
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True)
    with pytest.raises(OSError, match="Input/output error"):
        (point / "victim").read_bytes()

    failing = check_storage(policy([str(point)]), 5.0)
    assert not failing.healthy
    assert failing.details["io_errors"] >= 1
    assert "I/O errors, more than 0" in failing.reason


def test_shared_counter_is_counted_once_in_the_total(mount: Mount) -> None:
    point = mount("ext4", size_mb=8)
    (point / "var").mkdir()
    device = Path(check_storage(policy([str(point)]), 5.0).details["mounts"][str(point)]["device"]).name
    trigger_ext4_error(Path(f"/sys/fs/ext4/{device}"))
    outcome = check_storage(policy([str(point), str(point / "var")], max_errors=1), 5.0)
    assert outcome.healthy, outcome.reason
    assert [m["io_errors"] for m in outcome.details["mounts"].values()] == [1, 1]
    assert outcome.details["io_errors"] == 1


def test_missing_path_fails_and_the_rest_is_still_measured(mount: Mount, tmp_path: Path) -> None:
    point = mount("tmpfs")
    missing = tmp_path / "not-there"
    outcome = check_storage(policy([str(point), str(missing)]), 5.0)
    assert not outcome.healthy
    assert f"{missing} does not exist" in outcome.reason
    assert outcome.details["mounts"][str(missing)]["free_space_percent"] is None
    assert outcome.details["free_space_percent"] == 100.0


def test_plain_directory_is_measured_on_the_file_system_holding_it(mount: Mount) -> None:
    point = mount("tmpfs")
    inner = point / "var"
    inner.mkdir()
    outcome = check_storage(policy([str(inner)]), 5.0)
    assert outcome.healthy, outcome.reason
    entry = outcome.details["mounts"][str(inner)]
    assert entry["mounted_on"] == str(point)
    assert entry["device"] == "piccolo-test-tmpfs"


def test_unmounted_mount_point_is_measured_on_its_parent(tmp_path: Path) -> None:
    empty = tmp_path / "unmounted"
    empty.mkdir()
    outcome = check_storage(policy([str(empty)], min_free=0), 5.0)
    entry = outcome.details["mounts"][str(empty)]
    assert entry["mounted_on"] != str(empty)
    assert entry["free_space_percent"] == df_free_percent(empty)


def test_mount_point_with_a_space(mount: Mount) -> None:
    point = mount("tmpfs", name="with space")
    outcome = check_storage(policy([str(point)]), 5.0)
    assert outcome.details["mounts"][str(point)]["mounted_on"] == str(point)


def test_registry_entry(mount: Mount) -> None:
    pol = policy([str(mount("tmpfs"))])
    assert timeout_for(Component.STORAGE, pol) == pol.health_policy.thresholds.network_timeout_seconds
    assert CHECKS[Component.STORAGE](pol, 5.0).healthy


def test_parse_mountinfo_and_containing_mount() -> None:
    text = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 0:33 / /run/a\\040b rw - tmpfs tmp\\040fs rw\n"
        "41 22 0:34 / /run/a rw - tmpfs other rw\n"
        "42 40 0:35 / /run/a\\040b rw - tmpfs stacked rw\n"
    )
    entries = parse_mountinfo(text)
    assert [e.mount_point for e in entries] == ["/", "/run/a b", "/run/a", "/run/a b"]
    assert entries[1].source == "tmp fs"
    assert containing_mount("/run/a b/x", entries) == entries[3]  # the one mounted on top
    assert containing_mount("/run/a/x", entries) == entries[2]
    assert containing_mount("/run/ab", entries) == entries[0]
    assert containing_mount("/", entries) == entries[0]
