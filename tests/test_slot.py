"""piccolod.slot: the booted slot from the kernel command line and the GPT of a real sgdisk image."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from piccolod.gpt import read_table
from piccolod.slot import SlotError, SlotState, detect, find_disk, format_table, parse_cmdline
from tests.fixtures.gptdisk import (
    USR_A,
    USR_B,
    cmdline_for,
    corrupt,
    edit_copy,
    gptprio_next,
    install_update,
    set_attrs_in,
    setgoodroot,
)


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (f"root=LABEL=ROOT mount.usr=PARTUUID={USR_A} ro", USR_A),
        (cmdline_for(USR_B), USR_B),  # mount.usr=/dev/mapper/usr falls through to verity.usr
        (f"usr=PARTUUID={USR_B.upper()}", USR_B),
        (f"mount.usr=/dev/disk/by-partuuid/{USR_A}", USR_A),
        (f'mount.usr="PARTUUID={USR_A}"', USR_A),
        (f"usr=PARTUUID={USR_A} mount.usr=PARTUUID={USR_B}", USR_B),  # mount.usr wins over usr
        (f"mount.usr=PARTUUID={USR_A} mount.usr=PARTUUID={USR_B}", USR_B),  # last occurrence counts
        ("root=/dev/vda9 quiet", None),
        ("mount.usr=PARTUUID=zzzz", None),
        ("mount.usr=/dev/mapper/usr", None),
        (f"xmount.usr=PARTUUID={USR_A}", None),
    ],
)
def test_parse_cmdline(cmdline: str, expected: str | None) -> None:
    assert parse_cmdline(cmdline) == expected


def _cmdline(tmp_path: Path, partuuid: str) -> Path:
    path = tmp_path / "cmdline"
    path.write_text(cmdline_for(partuuid))
    return path


def test_marked_slot(flatcar_disk: Path, tmp_path: Path) -> None:
    slot = detect(_cmdline(tmp_path, USR_A), str(flatcar_disk))
    assert slot.error is None
    assert (slot.state, slot.name, slot.partuuid, slot.disk) == (
        SlotState.MARKED,
        "USR-A",
        USR_A,
        str(flatcar_disk),
    )
    assert [(r.name, r.number, r.priority, r.tries, r.successful, r.booted) for r in slot.rows] == [
        ("USR-A", 3, 1, 0, True, True),
        ("USR-B", 4, 0, 0, False, False),
    ]
    text = format_table(slot)
    assert "* USR-A" in text and "booted: USR-A" in text and "marked" in text
    assert "gpt: primary header at LBA 1" in text and slot.gpt_primary_error is None


def test_first_boot_of_an_update_is_unmarked(flatcar_disk: Path, tmp_path: Path) -> None:
    install_update(flatcar_disk, USR_A)
    booted = gptprio_next(flatcar_disk)
    assert booted == USR_B
    slot = detect(_cmdline(tmp_path, booted), str(flatcar_disk))
    assert (slot.state, slot.name) == (SlotState.UNMARKED, "USR-B")
    assert slot.booted is not None and (slot.booted.priority, slot.booted.tries) == (2, 0)
    setgoodroot(flatcar_disk, booted)
    assert detect(_cmdline(tmp_path, booted), str(flatcar_disk)).state is SlotState.MARKED


def test_unmarked_slot_not_marked_falls_back(flatcar_disk: Path) -> None:
    install_update(flatcar_disk, USR_A)
    assert gptprio_next(flatcar_disk) == USR_B  # tries 1 -> 0
    assert gptprio_next(flatcar_disk) == USR_A  # B now unbootable: GRUB falls back


def test_slot_named_by_number_when_unlabelled(flatcar_disk: Path, tmp_path: Path) -> None:
    subprocess.run(["sgdisk", "-c3:", "-c4:", str(flatcar_disk)], check=True, capture_output=True)
    slot = detect(_cmdline(tmp_path, USR_A), str(flatcar_disk))
    assert [r.name for r in slot.rows] == ["USR-A", "USR-B"]


def test_unknown_states_carry_a_clear_error(flatcar_disk: Path, tmp_path: Path) -> None:
    missing = detect(tmp_path / "nope", str(flatcar_disk))
    assert missing.state is SlotState.UNKNOWN
    assert missing.error and "nope: cannot read kernel command line" in missing.error

    (tmp_path / "plain").write_text("root=/dev/vda9\n")
    assert "no mount.usr=" in (detect(tmp_path / "plain", str(flatcar_disk)).error or "")

    other = "11111111-2222-3333-4444-555555555555"
    slot = detect(_cmdline(tmp_path, other), str(flatcar_disk))
    assert slot.state is SlotState.UNKNOWN and slot.partuuid == other
    assert f"no partition with PARTUUID {other}" in (slot.error or "")

    nodisk = detect(_cmdline(tmp_path, USR_A), str(tmp_path / "gone.img"))
    assert nodisk.state is SlotState.UNKNOWN and "gone.img: cannot open" in (nodisk.error or "")

    corrupt(flatcar_disk, "primary-header")
    repaired = detect(_cmdline(tmp_path, USR_A), str(flatcar_disk))  # the backup copy answers
    assert repaired.state is SlotState.MARKED and repaired.error is None
    assert repaired.gpt_header == "backup" and "CRC32" in (repaired.gpt_primary_error or "")
    assert "gpt: backup header at LBA 98303 (primary unusable: GPT header CRC32" in format_table(repaired)
    corrupt(flatcar_disk, "backup-entries")
    broken = detect(_cmdline(tmp_path, USR_A), str(flatcar_disk))
    assert broken.state is SlotState.UNKNOWN and "no valid GPT" in (broken.error or "")
    assert broken.gpt_header is None and "error:" in format_table(broken)


def _fake_sysfs(root: Path, disk_img: Path, name: str = "vdz") -> tuple[Path, Path]:
    sys_root, dev_root = root / "sys", root / "dev"
    (sys_root / "block" / "loop0").mkdir(parents=True)  # an unpartitioned disk is skipped
    for n in (1, 3, 4, 9):
        part = sys_root / "block" / name / f"{name}{n}"
        part.mkdir(parents=True)
        (part / "partition").write_text(f"{n}\n")
    dev_root.mkdir()
    shutil.copyfile(disk_img, dev_root / name)
    return sys_root, dev_root


def test_find_disk_by_scanning_sysfs(flatcar_disk: Path, tmp_path: Path) -> None:
    sys_root, dev_root = _fake_sysfs(tmp_path, flatcar_disk)
    assert find_disk(USR_B, sys_root=sys_root, dev_root=dev_root) == str(dev_root / "vdz")
    with pytest.raises(SlotError, match=r"no disk holds PARTUUID 11111111.*searched: vdz"):
        find_disk("11111111-2222-3333-4444-555555555555", sys_root=sys_root, dev_root=dev_root)
    slot = detect(_cmdline(tmp_path, USR_A), "auto", sys_root=sys_root, dev_root=dev_root)
    assert (slot.state, slot.disk) == (SlotState.MARKED, str(dev_root / "vdz"))


def test_find_disk_by_udev_link(flatcar_disk: Path, tmp_path: Path) -> None:
    sys_root, dev_root = _fake_sysfs(tmp_path, flatcar_disk)
    # The disk is only reachable through the link: /sys/block does not list it, so a scan cannot.
    real = sys_root / "devices" / "pci0" / "vdz"
    real.parent.mkdir(parents=True)
    (sys_root / "block" / "vdz").rename(real)
    (sys_root / "class" / "block").mkdir(parents=True)
    (sys_root / "class" / "block" / "vdz3").symlink_to(real / "vdz3")
    (dev_root / "vdz3").touch()
    (dev_root / "disk" / "by-partuuid").mkdir(parents=True)
    (dev_root / "disk" / "by-partuuid" / USR_A).symlink_to("../../vdz3")
    assert find_disk(USR_A, sys_root=sys_root, dev_root=dev_root) == str(dev_root / "vdz")
    with pytest.raises(SlotError, match="no disks"):
        find_disk(USR_B, sys_root=sys_root, dev_root=dev_root)


def test_auto_finds_a_real_loop_device(flatcar_disk: Path, tmp_path: Path) -> None:
    """The real /sys and /dev: the image attached as a loop device with its partitions added."""
    mine = str(uuid.uuid4())  # unique, so no other loop device on this machine can hold it
    subprocess.run(["sgdisk", f"-u3:{mine}", str(flatcar_disk)], capture_output=True, check=True)
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(flatcar_disk)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        subprocess.run(["partx", "-a", dev], capture_output=True, check=False)  # no udev here
        assert Path(f"/sys/block/{Path(dev).name}/{Path(dev).name}p3/partition").exists()
        assert find_disk(mine) == dev
        slot = detect(_cmdline(tmp_path, mine), "auto")
        assert (slot.state, slot.disk, slot.name) == (SlotState.MARKED, dev, "USR-A")
    finally:
        subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=True)


def test_a_disk_vanishing_during_the_scan_is_skipped(flatcar_disk: Path, tmp_path: Path) -> None:
    sys_root, dev_root = _fake_sysfs(tmp_path, flatcar_disk)
    # sorted before vdz: an entry whose device is gone (hot unplug between listdir and the look inside)
    (sys_root / "block" / "sda").symlink_to(sys_root / "devices" / "gone" / "sda")
    assert find_disk(USR_B, sys_root=sys_root, dev_root=dev_root) == str(dev_root / "vdz")
    slot = detect(_cmdline(tmp_path, USR_A), "auto", sys_root=sys_root, dev_root=dev_root)
    assert (slot.state, slot.disk) == (SlotState.MARKED, str(dev_root / "vdz"))


_DETECT_WITHOUT_DAC = """
import sys
from pathlib import Path
from piccolod.slot import detect, find_disk
slot = detect(sys.argv[1], sys.argv[2])
print(slot.state)
print(slot.error)
"""


def test_an_unopenable_boot_disk_says_which_device_and_why(flatcar_disk: Path, tmp_path: Path) -> None:
    """root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH opening a mode-000 image: EACCES, as a
    sandboxed unit gets EPERM from a DeviceAllow= that misses the disk's type."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed for this test"
    flatcar_disk.chmod(0)
    cmdline = _cmdline(tmp_path, USR_A)
    r = subprocess.run(
        [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            _DETECT_WITHOUT_DAC,
            str(cmdline),
            str(flatcar_disk),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    state, error = r.stdout.splitlines()
    assert state == "unknown"
    assert error.startswith(f"cannot open the boot disk {flatcar_disk}: Permission denied (EACCES;"), error


# --- ambiguous or untrustworthy tables: unknown, one line, never a guess ----------------------------


def test_two_partitions_labelled_usr_a_are_ambiguous(flatcar_disk: Path, tmp_path: Path) -> None:
    subprocess.run(["sgdisk", "-c4:USR-A", str(flatcar_disk)], check=True, capture_output=True)
    slot = detect(_cmdline(tmp_path, USR_A), str(flatcar_disk))
    assert slot.state is SlotState.UNKNOWN
    assert (
        slot.error == f"{flatcar_disk}: partitions 3 and 4 are both USR-A: which slot is which is ambiguous"
    )


def test_a_booted_partuuid_that_is_not_a_usr_slot(flatcar_disk: Path, tmp_path: Path) -> None:
    root = next(p for p in read_table(flatcar_disk).partitions if p.name == "ROOT")
    slot = detect(_cmdline(tmp_path, str(root.unique_guid)), str(flatcar_disk))
    assert slot.state is SlotState.UNKNOWN
    assert slot.error and "is partition 9 (ROOT), not a /usr slot" in slot.error


@pytest.mark.parametrize("case", ["disagree", "stale-backup", "duplicate-guid", "entries-lba-2^63"])
def test_untrustworthy_tables_are_unknown_with_one_line(
    flatcar_disk: Path, tmp_path: Path, case: str
) -> None:
    install_update(flatcar_disk, USR_A)  # USR-B: the first boot of an update
    if case == "disagree":
        set_attrs_in(flatcar_disk, "primary", 4, priority=2, tries=0, successful=True)
    elif case == "stale-backup":
        set_attrs_in(flatcar_disk, "backup", 4, priority=2, tries=0, successful=True)
        corrupt(flatcar_disk, "primary-entries")
    elif case == "duplicate-guid":
        for which in ("primary", "backup"):
            edit_copy(flatcar_disk, which, entries={(3, "unique"): uuid.UUID(USR_B).bytes_le})
    else:
        for which in ("primary", "backup"):
            edit_copy(flatcar_disk, which, header={"entries_lba": 1 << 63})
    slot = detect(_cmdline(tmp_path, USR_B), str(flatcar_disk))
    assert slot.state is SlotState.UNKNOWN and slot.error
    assert slot.error.startswith(str(flatcar_disk)) and "\n" not in slot.error
    assert format_table(slot).splitlines()[-1] == f"error: {slot.error}"


def test_status_prints_one_line_for_a_corrupt_disk(flatcar_disk: Path, tmp_path: Path) -> None:
    """``piccolod status`` on the issue's disk (entries at LBA 2^63 in both headers): no traceback."""
    for which in ("primary", "backup"):
        edit_copy(flatcar_disk, which, header={"entries_lba": 1 << 63})
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"agent:\n  state_dir: {tmp_path / 'state'}\n"
        f"  boot: {{cmdline: {_cmdline(tmp_path, USR_A)}, disk: {flatcar_disk}}}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "piccolod", "status", "--config", str(policy)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(flatcar_disk) in errors[0] and "not on the disk" in errors[0], r.stdout


def test_a_hostile_partition_label_is_escaped_in_the_table(flatcar_disk: Path, tmp_path: Path) -> None:
    name = "\x1b[2J\nROOT".encode("utf-16-le")
    for which in ("primary", "backup"):
        edit_copy(flatcar_disk, which, entries={(9, "name"): name})
    root = next(p for p in read_table(flatcar_disk).partitions if p.number == 9)
    text = format_table(detect(_cmdline(tmp_path, str(root.unique_guid)), str(flatcar_disk)))
    assert "\x1b" not in text and text.splitlines()[-1].endswith("(\\x1b[2J\\nROOT), not a /usr slot")


def test_the_disk_scan_says_why_a_gpt_it_found_was_not_used(flatcar_disk: Path, tmp_path: Path) -> None:
    set_attrs_in(flatcar_disk, "backup", 4, priority=2, tries=0, successful=True)  # the copies disagree
    sys_root, dev_root = _fake_sysfs(tmp_path, flatcar_disk)
    with pytest.raises(
        SlotError, match=r"searched: vdz\); cannot use .*vdz: the primary and backup GPT disagree"
    ):
        find_disk(USR_B, sys_root=sys_root, dev_root=dev_root)
