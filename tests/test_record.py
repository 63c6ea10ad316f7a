"""The rollback record: atomic write, read back on the next boot, and the rolled_back rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_round_trip_is_atomic_and_sorted(tmp_path: Path) -> None:
    r = sample()
    path = rec.write(tmp_path / "state", r)
    assert rec.read(tmp_path / "state") == r
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert [p.name for p in (tmp_path / "state").iterdir()] == [rec.RECORD_NAME]  # no temp file left


def test_failed_write_leaves_old_record_and_no_temp_file(tmp_path: Path) -> None:
    rec.write(tmp_path, sample())
    with pytest.raises(TypeError):
        rec.write_json_atomic(tmp_path / rec.RECORD_NAME, {"bad": object()})
    assert rec.read(tmp_path) == sample()
    assert sorted(p.name for p in tmp_path.iterdir()) == [rec.RECORD_NAME]


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


def test_supersede_moves_the_record_aside(tmp_path: Path) -> None:
    rec.supersede(tmp_path)  # nothing to do
    rec.write(tmp_path, sample())
    rec.supersede(tmp_path)
    assert rec.read(tmp_path) is None
    assert rec.read(tmp_path, rec.PREVIOUS_NAME) == sample()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", r"not a rollback record \(not a JSON object"),
        ('{"boot_id": 1}', "not a rollback record"),
    ],
)
def test_unreadable_record_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / rec.RECORD_NAME).write_text(text)
    with pytest.raises(rec.RecordError, match=f"{rec.RECORD_NAME}: {message}"):
        rec.read(tmp_path)


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


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("started_at", "yesterday", "started_at: expected an integer or a number, got str"),
        ("attempts", 1.5, "attempts: expected an integer, got float"),
        ("reboot_requested", "yes", "reboot_requested: expected true or false, got str"),
        ("slot", 3, "slot: expected a string or null, got int"),
        ("failed_at", True, "failed_at: expected an integer or a number, got bool"),
        ("components", "tpm", "components: expected a list"),
        ("components", ["tpm"], r"components\[0\]: expected an object"),
        (
            "components",
            [{"component": "tpm", "healthy": "no", "required": True, "reason": "", "duration_seconds": 1}],
            r"components\[0\]\.healthy: expected true or false, got str",
        ),
    ],
)
def test_a_wrong_typed_record_is_a_one_line_error(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    data = sample().to_json()
    data[field] = value
    (tmp_path / rec.RECORD_NAME).write_text(json.dumps(data))
    with pytest.raises(rec.RecordError, match=f"{rec.RECORD_NAME}: not a rollback record: {message}$"):
        rec.read(tmp_path)


def test_status_with_a_wrong_typed_record_exits_3_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir()
    data = sample().to_json()
    data["started_at"] = "yesterday"
    (state / rec.RECORD_NAME).write_text(json.dumps(data))
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    config = tmp_path / "p.yaml"
    boot = f"{{cmdline: {tmp_path / 'cmdline'}, disk: {tmp_path / 'no.img'}}}"
    config.write_text(f"agent:\n  state_dir: {state}\n  boot: {boot}\n")
    r = subprocess.run(
        [sys.executable, "-m", "piccolod", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    why = "not a rollback record: started_at: expected an integer or a number, got str"
    assert r.stderr.splitlines() == [f"piccolod: {state / rec.RECORD_NAME}: {why}"]
