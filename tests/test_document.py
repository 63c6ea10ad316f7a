"""The health document's machine facts: disk encryption from mountinfo and sysfs, boot id, uptime.

The readers take their paths as arguments; these tests give them small trees laid out as the kernel
lays out ``/proc/self/mountinfo`` and ``/sys/dev/block`` (this machine has no dm-crypt mapping).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from piccolod.document import boot_id, disk_encryption, system_uptime

MOUNTINFO = """\
22 1 {root} / / rw,relatime shared:1 - ext4 /dev/root rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 {var} / /var rw,relatime shared:2 - ext4 /dev/var rw
"""


def tree(tmp_path: Path, root: str, var: str, dm: dict[str, str], slaves: dict[str, list[str]]) -> Path:
    (tmp_path / "mountinfo").write_text(MOUNTINFO.format(root=root, var=var))
    block = tmp_path / "block"
    for dev in {root, var, *dm, *(s for v in slaves.values() for s in v)}:
        (block / dev).mkdir(parents=True, exist_ok=True)
    for dev, uuid in dm.items():
        (block / dev / "dm").mkdir()
        (block / dev / "dm" / "uuid").write_text(uuid + "\n")
    for dev, below in slaves.items():
        (block / dev / "slaves").mkdir()
        for b in below:
            (block / dev / "slaves" / b).symlink_to(block / b)
    return block


@pytest.mark.parametrize(
    ("root", "var", "dm", "slaves", "expected"),
    [
        ("8:1", "8:2", {}, {}, "none"),
        ("8:1", "253:0", {"253:0": "CRYPT-LUKS2-0123abcd-var"}, {}, "luks"),
        ("253:0", "8:2", {"253:0": "CRYPT-PLAIN-root"}, {}, "dm-crypt"),
        # LVM on LUKS: the root LV's slave is the LUKS mapping.
        ("253:1", "253:1", {"253:1": "LVM-abc", "253:0": "CRYPT-LUKS1-x"}, {"253:1": ["253:0"]}, "luks"),
        ("253:1", "8:2", {"253:1": "LVM-abc"}, {}, "none"),
        ("0:30", "0:31", {}, {}, "unknown"),  # overlay/tmpfs: cannot tell
    ],
)
def test_disk_encryption(
    tmp_path: Path, root: str, var: str, dm: dict[str, str], slaves: dict[str, list[str]], expected: str
) -> None:
    block = tree(tmp_path, root, var, dm, slaves)
    assert disk_encryption(mountinfo=tmp_path / "mountinfo", sys_block=block) == expected


def test_disk_encryption_unreadable_is_unknown(tmp_path: Path) -> None:
    assert disk_encryption(mountinfo=tmp_path / "absent", sys_block=tmp_path) == "unknown"


def test_disk_encryption_on_this_machine_is_a_known_word() -> None:
    assert disk_encryption() in {"none", "luks", "dm-crypt", "unknown"}


def test_boot_id_and_uptime(tmp_path: Path) -> None:
    assert boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert boot_id(tmp_path / "absent") == "unknown"
    (tmp_path / "uptime").write_text("1234.56 789.00\n")
    assert system_uptime(tmp_path / "uptime") == 1234.56
    assert system_uptime() > 0
