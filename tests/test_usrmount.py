"""The booted slot is what is mounted on /usr: the mount lookup of the agent and of the guard, side by side.

Every case runs through both programs (``piccolod.slot.detect`` and the real guard script's ``state``) on
a real disk: the Flatcar image attached as a loop device with its partitions, after an update (USR-A
marked, USR-B installed and not). Where the case needs what no machine here can have (device-mapper,
btrfs, overlays, bind mounts), the mount table and sysfs are made up around the real loop device
(:class:`~tests.fixtures.guard.FakeKernel`); the first tests use the real ``/sys`` and ``/dev``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolod.slot import SlotState, detect
from piccolod.usrmount import UsrError, find, valid_spec
from tests.fixtures.gptdisk import USR_A, USR_B, cmdline_for, install_update, set_attrs
from tests.fixtures.guard import FakeKernel, Guard, LoopDisk, render_guard

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_guard(tmp_path_factory.mktemp("guard") / "piccolod-guard")


@pytest.fixture
def loop(flatcar_disk: Path) -> Iterator[LoopDisk]:
    install_update(flatcar_disk, USR_A)  # USR-A marked (3), USR-B fresh and unmarked (4)
    with LoopDisk(flatcar_disk) as disk:
        yield disk


def both(
    script: Path, work: Path, text: str, usr: str = "auto", kernel: FakeKernel | None = None
) -> tuple[str, str]:
    """(the agent's state, the guard's state) for command line ``text`` and /usr ``usr``; they must agree
    here, and the guard's words are returned for the assertions."""
    guard = Guard(script, work, usr, env=kernel.env if kernel else {})
    guard.cmdline(text)
    where = kernel.where if kernel else {}
    agent = detect(guard.cmdline_file, usr, **where)
    state, said = guard.state()
    assert (agent.state, state) in ((SlotState.MARKED, "marked"), (SlotState.UNMARKED, "unmarked"),
                                    (SlotState.UNKNOWN, "unknown")), (agent, said)  # fmt: skip
    return state, f"{agent.error} | {said}"


def real_mount(loop: LoopDisk, number: int, tmp_path: Path, fstype: str = "ext4") -> FakeKernel:
    """A mount table saying /usr is partition ``number`` of the loop disk; the real sysfs and /dev."""
    kernel = FakeKernel(tmp_path / "k", real=True)
    major, minor = loop.numbers(number)
    kernel.mount(major, minor, fstype, loop.part(number))
    return kernel


# --- the real /sys and /dev -----------------------------------------------------------------------------


@pytest.mark.parametrize(("number", "uuid", "want"), [(3, USR_A, "marked"), (4, USR_B, "unmarked")])
def test_the_partition_mounted_on_usr_is_the_booted_slot(
    script: Path, loop: LoopDisk, tmp_path: Path, number: int, uuid: str, want: str
) -> None:
    kernel = real_mount(loop, number, tmp_path)
    guard = Guard(script, tmp_path, "auto", env=kernel.env)
    guard.cmdline(cmdline_for(uuid))
    agent = detect(guard.cmdline_file, "auto", **kernel.where)
    state, said = guard.state()
    assert (str(agent.state), state) == (want, want), (agent, said)
    assert agent.disk == loop.dev and agent.number == number and f"of {loop.dev}" in said
    assert agent.found and f"on partition {number} ({loop.name}p{number}) of {loop.dev}" in agent.found


def test_a_block_device_can_stand_for_the_mount(script: Path, loop: LoopDisk, tmp_path: Path) -> None:
    """``device:/dev/...`` replaces the mount table only: sysfs, the disk node and the GPT are read."""
    state, said = both(script, tmp_path, cmdline_for(USR_B), f"device:{loop.part(4)}")
    assert state == "unmarked" and "override device:" in said
    state, said = both(script, tmp_path, cmdline_for(USR_B), f"device:{loop.dev}")  # a whole disk
    assert state == "unknown" and f"{loop.name} is not a partition" in said


def test_two_flatcar_disks_the_mounted_one_counts(
    script: Path, flatcar_disk: Path, tmp_path: Path, loop: LoopDisk
) -> None:
    """Issue 13, 2: an old install beside the booted disk, with the same PARTUUIDs and USR-B marked long
    ago. Whichever partition a /dev/disk/by-partuuid link names, the booted USR-B is unmarked."""
    other = tmp_path / "other.img"
    other.write_bytes(flatcar_disk.read_bytes())
    set_attrs(other, 4, priority=2, tries=0, successful=True)
    with LoopDisk(other) as old:
        for target in (loop, old):  # udev's link, as a made-up /dev: the programs must not care
            links = tmp_path / "dev" / "disk" / "by-partuuid"
            links.mkdir(parents=True, exist_ok=True)
            (links / USR_B).unlink(missing_ok=True)
            (links / USR_B).symlink_to(target.part(4))
            kernel = real_mount(loop, 4, tmp_path / target.name)
            state, said = both(script, tmp_path, cmdline_for(USR_B), "auto", kernel)
            assert state == "unmarked", said
            state, _ = both(script, tmp_path, cmdline_for(USR_B), f"device:{old.part(4)}")
            assert state == "marked"  # the old disk's USR-B is marked: read only when it is the mounted one


# --- made-up mount tables and sysfs over the real disk ---------------------------------------------------


def tree(tmp_path: Path, loop: LoopDisk) -> tuple[FakeKernel, dict[int, Path]]:
    kernel = FakeKernel(tmp_path / "k")
    _disk, parts = kernel.copy_of(loop)
    return kernel, parts


def verity(kernel: FakeKernel, parts: dict[int, Path], number: int = 3, name: str = "usr") -> str:
    """dm-0 (254:0) named ``name`` over partition ``number``, and its node: the mount's source."""
    kernel.mapper("dm-0", 254, 0, name, [parts[number]])
    kernel.node(f"mapper/{name}", 254, 0)
    return kernel.path(f"mapper/{name}")


def test_dm_verity_btrfs_under_a_sysext_overlay_and_bind_mounts(
    script: Path, loop: LoopDisk, tmp_path: Path
) -> None:
    """Flatcar as it runs: btrfs on /dev/mapper/usr (an anonymous 0:N device in the mount table), a merged
    system extension's overlay on top, and a unit's ProtectSystem= bind mounts of both."""
    kernel, parts = tree(tmp_path, loop)
    source = verity(kernel, parts)
    bottom = kernel.mount(0, 31, "btrfs", source)
    over = kernel.mount(0, 90, "overlay", "sysext", parent=bottom)
    again = kernel.mount(0, 31, "btrfs", source, parent=over)  # ProtectSystem=: a bind of both
    kernel.mount(0, 90, "overlay", "sysext", parent=again)
    state, said = both(script, tmp_path, cmdline_for(USR_A, verity=True), "auto", kernel)
    assert state == "marked" and "through device-mapper dm-0 (usr)" in said, said
    grub_menu = "mount.usr=/dev/mapper/usr verity.usr=PARTLABEL=USR-A rootflags=rw mount.usrflags=ro\n"
    assert both(script, tmp_path, grub_menu, "auto", kernel)[0] == "marked"  # "Flatcar USR-A", dm-verity
    state, said = both(script, tmp_path, cmdline_for(USR_A), "auto", kernel)
    assert state == "unknown" and "mapper" in said  # dm-verity mounted, the command line names the partition


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("nothing-on-usr", "nothing is mounted on /usr"),
        ("tmpfs", "not a block device"),
        ("only-overlay", "only overlays"),
        ("two-devices", "more than one device"),
        ("squashfs-on-a-loop-disk", "is not a partition"),
        ("dm-over-two", "over 2 devices"),
        ("dm-over-dm", "over another one"),
        ("other-mapper-name", "mapper"),
        ("kernel-disagrees-with-gpt", "the kernel mounted sectors"),
        ("malformed-mountinfo", "not a mount table entry"),
        ("escaped-mount-point", "nothing is mounted on /usr"),
        ("disk-node-missing", "is not the block device"),
        ("btrfs-source-not-a-device", "not a block device"),
    ],
)
def test_what_is_not_one_partition_is_unknown(
    script: Path, loop: LoopDisk, tmp_path: Path, case: str, words: str
) -> None:
    kernel, parts = tree(tmp_path, loop)
    text = cmdline_for(USR_A, verity=True)
    major, minor = loop.numbers(3)
    if case == "tmpfs":
        kernel.mount(0, 40, "tmpfs", "tmpfs")
    elif case == "only-overlay":
        kernel.mount(0, 41, "overlay", "overlay")
    elif case == "two-devices":
        kernel.mount(0, 31, "btrfs", verity(kernel, parts))
        kernel.mount(major, minor, "ext4", loop.part(3))
    elif case == "squashfs-on-a-loop-disk":
        kernel.mount(*loop.numbers(), "squashfs", loop.dev)
    elif case in ("dm-over-two", "dm-over-dm", "other-mapper-name"):
        below = {"dm-over-two": [parts[3], parts[4]], "other-mapper-name": [parts[3]]}
        if case == "dm-over-dm":
            inner = kernel.mapper("dm-1", 254, 1, "inner", [parts[3]])
            below[case] = [inner]
        kernel.mapper("dm-0", 254, 0, "usr2" if case == "other-mapper-name" else "usr", below[case])
        kernel.node("mapper/usr", 254, 0)
        kernel.mount(254, 0, "ext4", kernel.path("mapper/usr"))
    elif case == "kernel-disagrees-with-gpt":
        (parts[3] / "start").write_text("4097\n")
        kernel.mount(0, 31, "btrfs", verity(kernel, parts))
    elif case == "malformed-mountinfo":
        kernel.mount(0, 31, "btrfs", verity(kernel, parts))
        (kernel.root / "mountinfo").write_text(kernel.mounts + "this is no entry\n")
    elif case == "escaped-mount-point":
        kernel.mount(0, 31, "btrfs", verity(kernel, parts), point="/usr\\040x")
    elif case == "disk-node-missing":
        kernel.mount(0, 31, "btrfs", verity(kernel, parts))
        (kernel.root / "dev" / loop.name).unlink()
        kernel.node(loop.name, 7, 255)  # another device's number
    elif case == "btrfs-source-not-a-device":
        kernel.mount(0, 31, "btrfs", "/etc/hostname")
    elif case == "nothing-on-usr":
        (kernel.root / "mountinfo").write_text(kernel.mounts)
    state, said = both(script, tmp_path, text, "auto", kernel)
    assert state == "unknown" and words in said, said


def test_the_guard_never_reads_by_partuuid_links(script: Path, loop: LoopDisk, tmp_path: Path) -> None:
    """The guard's whole script: no /dev/disk/by-* path is opened or resolved, only compared."""
    text = script.read_text()
    assert 'readlink -f "$DEV/disk' not in text and "blkid -t" not in text and "by-partuuid/$" not in text


@pytest.mark.parametrize(
    ("spec", "ok"),
    [("auto", True), ("device:/dev/vda3", True), ("image:4:/srv/disk.img", True), ("image:0:/x", False),
     ("image:4:relative", False), ("/dev/vda", False), ("device:relative", False), ("auto\n", False),
     ("image:1234567:/x", False), ("", False)],
)  # fmt: skip
def test_the_override_is_spelled_out(spec: str, ok: bool, tmp_path: Path) -> None:
    assert valid_spec(spec) is ok
    if not ok:
        with pytest.raises(UsrError):
            find(spec)


def test_a_mount_table_that_cannot_be_read_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(UsrError, match="cannot read the mount table"):
        find("auto", mountinfo=tmp_path / "missing")


def test_losetup_is_there() -> None:
    assert subprocess.run(["losetup", "--version"], capture_output=True, check=False).returncode == 0
