"""The rollback record: the rolled_back rule, the OS version, the boot id and the text for people.

Reading and writing it (inside the journal) is tests/test_journal.py."""

from __future__ import annotations

from pathlib import Path

from piccolod import record as rec
from piccolod.slot import BootSlot, SlotState
from tests.fixtures.gptdisk import USR_A, USR_B


def sample(**over: object) -> rec.RollbackRecord:
    base: dict[str, object] = {
        "boot_id": "boot-1",
        "slot": "USR-B",
        "partuuid": USR_B,
        "disk": "/dev/vda",
        "os_version": "4081.2.0",
        "condition": "critical_component_failure",
        "reason": "required components failing: tpm",
        "started_at": 1795790000.25,
        "failed_at": 1795790005.5,
        "deadline_seconds": 5.0,
        "attempts": 3,
        "reboot_requested": True,
        "components": (rec.ComponentVerdict("tpm", False, True, "no answer within 1s", 1.25),),
    }
    base.update(over)
    return rec.RollbackRecord(**base)  # type: ignore[arg-type]


def booted(partuuid: str, state: SlotState) -> BootSlot:
    return BootSlot(partuuid, "/dev/vda", "USR-A" if partuuid == USR_A else "USR-B", state)


def test_rolled_back_only_on_the_other_marked_slot_in_a_later_boot(tmp_path: Path) -> None:
    r = sample()
    status = rec.update_status(r, booted(USR_A, SlotState.MARKED), "boot-2")
    assert status is not None and status[0] == "rolled_back"
    assert "USR-B rolled back: critical_component_failure: required components failing: tpm" in status[1]
    assert rec.update_status(r, booted(USR_A, SlotState.MARKED), "boot-1") is None  # same boot
    assert rec.update_status(r, booted(USR_B, SlotState.MARKED), "boot-2") is None  # same slot
    assert rec.update_status(r, booted(USR_A, SlotState.UNMARKED), "boot-2") is None
    assert rec.update_status(r, booted(USR_A, SlotState.UNKNOWN), "boot-2") is None
    assert rec.update_status(None, booted(USR_A, SlotState.MARKED), "boot-2") is None


def test_os_version_prefers_flatcar_release(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.write_text("FLATCAR_RELEASE_VERSION=4081.2.0\nFLATCAR_RELEASE_BOARD=amd64-usr\n")
    osr = tmp_path / "os-release"
    osr.write_text('NAME="Debian"\nVERSION_ID="12"\n')
    assert rec.os_version([release, osr]) == "4081.2.0"
    assert rec.os_version([tmp_path / "missing", osr]) == "12"
    assert rec.os_version([tmp_path / "missing"]) is None


def test_boot_id_and_format(tmp_path: Path) -> None:
    (tmp_path / "boot_id").write_text("abc\n")
    assert rec.read_boot_id(tmp_path / "boot_id") == "abc"
    assert rec.read_boot_id(tmp_path / "none") == "unknown"
    assert len(rec.read_boot_id()) == 36
    text = rec.format_record(sample())
    assert "USR-B" in text and "FAIL tpm" in text and "critical_component_failure" in text
    assert rec.format_record(None) == "last rollback record: none"
