"""piccolod.slot: the booted slot is the partition /usr is mounted from, verified against its GPT entry and
the kernel command line, on real sgdisk images (``image:N:IMG`` stands in for the mount; the lookup
itself is ``tests/test_usrmount.py``'s, and the guard is held to the same answers in
``tests/test_guard_differential.py``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from piccolod.gpt import read_table
from piccolod.slot import SlotState, detect, format_table
from tests.fixtures.gptdisk import (
    USR_A,
    USR_B,
    USR_TYPE,
    cmdline_for,
    corrupt,
    edit_copy,
    gptprio_next,
    install_update,
    set_attrs_in,
    setgoodroot,
    usr_device,
)


def _cmdline(tmp_path: Path, partuuid: str, text: str | None = None) -> Path:
    path = tmp_path / "cmdline"
    path.write_text(cmdline_for(partuuid) if text is None else text)
    return path


def test_marked_slot(flatcar_disk: Path, tmp_path: Path) -> None:
    slot = detect(_cmdline(tmp_path, USR_A), usr_device(flatcar_disk, partuuid=USR_A))
    assert slot.error is None
    assert (slot.state, slot.name, slot.partuuid, slot.disk, slot.number) == (
        SlotState.MARKED, "USR-A", USR_A, str(flatcar_disk), 3,
    )  # fmt: skip
    assert [(r.name, r.number, r.priority, r.tries, r.successful, r.booted) for r in slot.rows] == [
        ("USR-A", 3, 1, 0, True, True),
        ("USR-B", 4, 0, 0, False, False),
    ]
    text = format_table(slot)
    assert "* USR-A" in text and "booted: USR-A" in text and "marked" in text
    assert f"found: partition 3 of {flatcar_disk} (override image:3:" in text
    assert "gpt: primary header at LBA 1" in text and slot.gpt_primary_error is None


def test_first_boot_of_an_update_is_unmarked(flatcar_disk: Path, tmp_path: Path) -> None:
    install_update(flatcar_disk, USR_A)
    booted = gptprio_next(flatcar_disk)
    assert booted == USR_B
    usr = usr_device(flatcar_disk, partuuid=booted)
    slot = detect(_cmdline(tmp_path, booted), usr)
    assert (slot.state, slot.name) == (SlotState.UNMARKED, "USR-B")
    assert slot.booted is not None and (slot.booted.priority, slot.booted.tries) == (2, 0)
    setgoodroot(flatcar_disk, booted)
    assert detect(_cmdline(tmp_path, booted), usr).state is SlotState.MARKED


def test_unmarked_slot_not_marked_falls_back(flatcar_disk: Path) -> None:
    install_update(flatcar_disk, USR_A)
    assert gptprio_next(flatcar_disk) == USR_B  # tries 1 -> 0
    assert gptprio_next(flatcar_disk) == USR_A  # B now unbootable: GRUB falls back


@pytest.mark.parametrize(
    "form",
    [
        "mount.usr=PARTUUID={u}",
        "mount.usr=PARTLABEL=USR-A",  # GRUB's menu entry "Flatcar USR-A"
        "mount.usr=/dev/disk/by-partuuid/{u}",
        "mount.usr=/dev/disk/by-partlabel/USR-A",
        "mount.usr=PARTUUID=00000000-0000-4000-8000-000000000000 mount.usr=PARTUUID={u}",  # the last counts
        "usr=PARTUUID={U} mount.usr=PARTUUID={u}",
    ],
)
def test_command_lines_that_name_the_mounted_partition(flatcar_disk: Path, tmp_path: Path, form: str) -> None:
    text = "BOOT_IMAGE=/flatcar/vmlinuz-a " + form.format(u=USR_A, U=USR_A.upper()) + " ro\n"
    slot = detect(_cmdline(tmp_path, USR_A, text), usr_device(flatcar_disk, partuuid=USR_A))
    assert (slot.state, slot.error) == (SlotState.MARKED, None)


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ("console=ttyS0", "names no /usr for systemd"),
        (
            "mount.usr=PARTUUID={U}",
            "which is not partition 3",
        ),  # udev links by lower case; systemd keeps case
        ("mount.usr=PARTUUID={b}", "which is not partition 3"),
        ("mount.usr=PARTLABEL=usr-a", "which is not partition 3"),  # labels are case-sensitive
        ("mount.usr=/dev/mapper/usr verity.usr=PARTUUID={u}", "which is not partition 3"),  # no mapping here
        ("mount.usr=PARTUUID={u} x\rmount.usr=PARTUUID={b}", "which is not partition 3"),  # issue 13, 3
        ('mount.usr=PARTUUID={u} "mount.usr=PARTUUID={b}"', "which is not partition 3"),  # issue 13, 3
        ("mount.usr=PARTUUID={b} x\rmount.usr=PARTUUID={u}", "early init mounts PARTUUID=" + USR_B),
        ("mount.usr=PARTUUID={u} usrhash=x mount.usr=", "has no single reading"),  # 252 and 257 differ
        ("mount.usr=PARTUUID={u} x=*", "has no single reading"),  # a glob for the early init
        ("mount.usr=PARTUUID={u}\nmount.usr=PARTUUID={b}", "line break before its end"),
        ("mount.usr='PARTUUID={u}'", "early init mounts 'PARTUUID="),  # it keeps quotes
    ],
)
def test_command_lines_that_do_not_name_it_are_unknown(
    flatcar_disk: Path, tmp_path: Path, form: str, why: str
) -> None:
    text = form.format(u=USR_A, U=USR_A.upper(), b=USR_B) + "\n"
    slot = detect(_cmdline(tmp_path, USR_A, text), usr_device(flatcar_disk, partuuid=USR_A))
    assert slot.state is SlotState.UNKNOWN and why in (slot.error or ""), slot.error


def test_a_file_system_label_names_the_partition(flatcar_disk: Path, tmp_path: Path) -> None:
    """``mount.usr=LABEL=`` (and ``/dev/disk/by-label/``): the label blkid probes in that partition."""
    usr_b = next(p for p in read_table(flatcar_disk).partitions if p.number == 4)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "USR-B", "-E", f"offset={usr_b.first_lba * 512}", str(flatcar_disk),
         "4M"],
        check=True, capture_output=True,
    )  # fmt: skip
    usr = usr_device(flatcar_disk, partuuid=USR_B)
    for form, state in (("LABEL=USR-B", SlotState.UNMARKED), ("/dev/disk/by-label/USR-B", SlotState.UNMARKED),
                        ("LABEL=USR-A", SlotState.UNKNOWN)):  # fmt: skip
        slot = detect(_cmdline(tmp_path, USR_B, f"mount.usr={form}\n"), usr)
        assert slot.state is state, (form, slot.error)
    slot = detect(
        _cmdline(tmp_path, USR_A, "mount.usr=LABEL=USR-B\n"), usr_device(flatcar_disk, partuuid=USR_A)
    )
    assert slot.state is SlotState.UNKNOWN  # USR-A holds no file system with that label


def test_unknown_states_carry_a_clear_error(flatcar_disk: Path, tmp_path: Path) -> None:
    usr = usr_device(flatcar_disk, partuuid=USR_A)
    missing = detect(tmp_path / "nope", usr)
    assert missing.state is SlotState.UNKNOWN
    assert missing.error and "nope: cannot read the kernel command line" in missing.error

    other = "11111111-2222-3333-4444-555555555555"
    slot = detect(_cmdline(tmp_path, other), usr)
    assert slot.state is SlotState.UNKNOWN and slot.partuuid is None
    assert f"/dev/disk/by-partuuid/{other} as /usr, which is not partition 3 (USR-A)" in (slot.error or "")

    nodisk = detect(_cmdline(tmp_path, USR_A), f"image:3:{tmp_path / 'gone.img'}")
    assert nodisk.state is SlotState.UNKNOWN and "gone.img: cannot open" in (nodisk.error or "")

    corrupt(flatcar_disk, "primary-header")
    repaired = detect(_cmdline(tmp_path, USR_A), usr)  # the backup copy answers
    assert repaired.state is SlotState.MARKED and repaired.error is None
    assert repaired.gpt_header == "backup" and "CRC32" in (repaired.gpt_primary_error or "")
    assert "gpt: backup header at LBA 98303 (primary unusable: GPT header CRC32" in format_table(repaired)
    corrupt(flatcar_disk, "backup-entries")
    broken = detect(_cmdline(tmp_path, USR_A), usr)
    assert broken.state is SlotState.UNKNOWN and "no valid GPT" in (broken.error or "")
    assert broken.gpt_header is None and "error:" in format_table(broken)


_DETECT_WITHOUT_DAC = """
import sys
from piccolod.slot import detect
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
        [setpriv, "--bounding-set=-dac_override,-dac_read_search",
         "--inh-caps=-dac_override,-dac_read_search", sys.executable, "-c", _DETECT_WITHOUT_DAC, str(cmdline),
         usr_device(flatcar_disk, partuuid=USR_A)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    state, error = r.stdout.splitlines()
    assert state == "unknown"
    assert error.startswith(f"cannot open the boot disk {flatcar_disk}: Permission denied (EACCES;"), error


# --- ambiguous or untrustworthy tables: unknown, one line, never a guess ----------------------------


def test_two_partitions_labelled_usr_a_are_ambiguous(flatcar_disk: Path, tmp_path: Path) -> None:
    subprocess.run(["sgdisk", "-c4:USR-A", str(flatcar_disk)], check=True, capture_output=True)
    slot = detect(_cmdline(tmp_path, USR_A), usr_device(flatcar_disk, partuuid=USR_A))
    assert slot.state is SlotState.UNKNOWN
    assert (
        slot.error == f"{flatcar_disk}: partitions 3 and 4 are both USR-A: which slot is which is ambiguous"
    )


def test_an_unlabelled_booted_partition_is_unknown(flatcar_disk: Path, tmp_path: Path) -> None:
    subprocess.run(["sgdisk", "-c3:", "-c4:", str(flatcar_disk)], check=True, capture_output=True)
    slot = detect(_cmdline(tmp_path, USR_A), usr_device(flatcar_disk, partuuid=USR_A))
    assert slot.state is SlotState.UNKNOWN and "label that is empty" in (slot.error or "")
    assert [r.name for r in slot.rows] == ["USR-A", "USR-B"]  # the table still names them by number


@pytest.mark.parametrize("twin", [3, 1, 2])
def test_a_duplicate_partuuid_is_unknown(flatcar_disk: Path, tmp_path: Path, twin: int) -> None:
    """Issue 13, 1: sgdisk writes a second USR-B GUID without a warning, on USR-A, EFI or BIOS-BOOT (retyped
    as /usr and marked). The booted USR-B (fresh, unmarked) must not read as marked, nor as anything."""
    install_update(flatcar_disk, USR_A)
    argv = ["sgdisk", f"-u{twin}:{USR_B}"]
    if twin != 3:
        argv += [f"-t{twin}:{USR_TYPE}", f"-A{twin}:set:56"]
    subprocess.run([*argv, str(flatcar_disk)], check=True, capture_output=True)
    assert "No problems found" in subprocess.run(["sgdisk", "-v", str(flatcar_disk)], capture_output=True,
                                                 text=True, check=False).stdout  # fmt: skip
    slot = detect(_cmdline(tmp_path, USR_B), usr_device(flatcar_disk, partuuid=USR_B))
    assert slot.state is SlotState.UNKNOWN and "share the unique GUID" in (slot.error or ""), slot.error


def test_a_booted_partition_that_is_not_a_usr_slot(flatcar_disk: Path, tmp_path: Path) -> None:
    root = next(p for p in read_table(flatcar_disk).partitions if p.name == "ROOT")
    slot = detect(_cmdline(tmp_path, str(root.unique_guid)), f"image:9:{flatcar_disk}")
    assert slot.state is SlotState.UNKNOWN
    assert (
        slot.error
        and "partition 9 (ROOT) is of type 3884dd41" in slot.error
        and "not a Flatcar /usr" in slot.error
    )


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
    slot = detect(_cmdline(tmp_path, USR_B), usr_device(flatcar_disk, partuuid=USR_B))
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
        f"  boot: {{cmdline: {_cmdline(tmp_path, USR_A)}, "
        f"usr_device: '{usr_device(flatcar_disk, partuuid=USR_A)}'}}\n"
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
    text = format_table(detect(_cmdline(tmp_path, str(root.unique_guid)), f"image:9:{flatcar_disk}"))
    assert "\x1b" not in text and "(\\x1b[2J\\nROOT) is of type" in text.splitlines()[-1]
