"""The base image's guard script on real GPT images (sgdisk-made), run by the real ``sh``.

The guard lets update-engine start at once on a marked slot; anything else (unmarked, or whatever it
cannot read, verify or tell apart) waits for piccolod's pass token of this boot and fails when its wait
runs out. docs/boot.md says why that is safe. Which slot is booted and how it reads is the agent's rule
(``tests/test_slot.py``, ``tests/test_usrmount.py``); ``tests/test_guard_differential.py`` holds the guard
to at most what the agent says on thousands of disks and command lines. This file is the guard's own
behaviour: the wait, the token, and the unit it runs in.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.gptdisk import (
    USR_A,
    USR_B,
    cmdline_for,
    corrupt,
    gptprio_next,
    install_update,
    usr_device,
)
from tests.fixtures.guard import BOOT_ID, FakeKernel, Guard, render_guard


@pytest.fixture(scope="module")
def guard_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_guard(tmp_path_factory.mktemp("guard") / "piccolod-guard")


def boot(guard: Guard, disk: Path) -> str:
    """Play GRUB on ``disk`` and point the guard at the slot it picked (as the mount would be)."""
    booted = gptprio_next(disk)
    guard.cmdline(cmdline_for(booted))
    guard.usr = usr_device(disk, partuuid=booted)
    return booted


@pytest.fixture
def guard(guard_script: Path, tmp_path: Path) -> Guard:
    return Guard(guard_script, tmp_path)


def test_a_marked_slot_lets_update_engine_go_at_once(guard: Guard, flatcar_disk: Path) -> None:
    assert boot(guard, flatcar_disk) == USR_A  # marked
    done, took = guard.run(wait=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "marked good: update-engine may start" in done.stdout and took < 5


def test_an_unmarked_slot_waits_and_fails_without_a_pass(guard: Guard, flatcar_disk: Path) -> None:
    install_update(flatcar_disk, USR_A)
    assert boot(guard, flatcar_disk) == USR_B  # unmarked
    done, took = guard.run(wait=1)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the booted slot is unmarked" in done.stdout and "no pass from piccolod within 1s" in done.stdout
    assert 1.0 <= took < 5


def _put_token(guard: Guard, text: str = BOOT_ID + "\n", mode: int = 0o600) -> None:
    tmp = guard.token.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(guard.token)


def test_a_pass_of_this_boot_opens_it(guard: Guard, flatcar_disk: Path) -> None:
    install_update(flatcar_disk, USR_A)
    boot(guard, flatcar_disk)

    def pass_later() -> None:
        time.sleep(0.5)
        _put_token(guard)

    t = threading.Thread(target=pass_later)
    t.start()
    done, took = guard.run(wait=20)
    t.join()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate passed in this boot" in done.stdout and 0.5 <= took < 5


@pytest.mark.parametrize("token", ["another-boot", "symlink", "not-root", "mode-0644", "directory", "fifo"])
def test_only_a_root_0600_regular_token_of_this_boot_counts(
    guard: Guard, flatcar_disk: Path, token: str
) -> None:
    install_update(flatcar_disk, USR_A)
    boot(guard, flatcar_disk)
    if token == "another-boot":
        _put_token(guard, "another-boot\n")
    elif token == "symlink":  # a link to a perfect token elsewhere
        real = guard.work / "elsewhere"
        real.write_text(BOOT_ID + "\n")
        real.chmod(0o600)
        guard.token.symlink_to(real)
    elif token == "not-root":
        _put_token(guard)
        os.chown(guard.token, 1000, 1000)
    elif token == "mode-0644":
        _put_token(guard, mode=0o644)
    elif token == "directory":
        guard.token.mkdir()
    else:
        os.mkfifo(guard.token, 0o600)
    done, _ = guard.run(wait=0.5)
    assert done.returncode == 1, done.stdout
    assert "no pass from piccolod" in done.stdout


@pytest.mark.parametrize("damage", ["primary-header", "primary-entries", "backup-header", "backup-entries"])
def test_a_damaged_table_is_not_marked_even_when_it_says_so(
    guard: Guard, flatcar_disk: Path, damage: str
) -> None:
    boot(guard, flatcar_disk)  # USR-A, marked...
    corrupt(flatcar_disk, damage)  # ...on a table with a damaged copy
    done, _ = guard.run(wait=0.3)
    assert done.returncode == 1, done.stdout
    assert "the booted slot is unknown" in done.stdout


def test_a_grown_disk_is_still_read(guard: Guard, flatcar_disk: Path) -> None:
    """The backup table no longer at the end of the disk (an image written to a larger disk) is benign."""
    boot(guard, flatcar_disk)
    with flatcar_disk.open("r+b") as f:
        f.truncate(flatcar_disk.stat().st_size * 2)
    done, _ = guard.run(wait=30)
    assert done.returncode == 0, done.stdout


def test_no_usr_partition_waits_for_the_agent(guard_script: Path, tmp_path: Path) -> None:
    """A PXE boot's /usr is a squashfs in RAM; the unit does not even run there (update-engine's own
    ConditionPathExists=!/usr/.noupdate), and were it run it would find no slot and hold update-engine."""
    kernel = FakeKernel(tmp_path / "k")
    kernel.mount(0, 40, "squashfs", "/usr.squashfs")
    guard = Guard(guard_script, tmp_path, "auto", env=kernel.env)
    guard.cmdline("BOOT_IMAGE=/flatcar/vmlinuz-a flatcar.first_boot=1\n")
    done, _ = guard.run(wait=0.3)
    assert done.returncode == 1 and "squashfs /usr.squashfs mount, not a block device" in done.stdout, (
        done.stdout
    )


def test_the_state_command_says_how_the_slot_reads(guard: Guard, flatcar_disk: Path) -> None:
    boot(guard, flatcar_disk)
    state, said = guard.state()
    assert state == "marked" and f"partition 3 of {flatcar_disk} (override image:3:" in said
    assert "primary GPT header at LBA 1" in said


def _with_awk(guard: Guard, awk: str) -> dict[str, str]:
    path = shutil.which(awk)
    assert path, f"{awk} not found: apt-get install {awk}"
    bin_dir = guard.work / f"bin-{awk}"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "awk").unlink(missing_ok=True)
    (bin_dir / "awk").symlink_to(path)
    return {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.mark.parametrize("damage", [None, "primary-header", "primary-entries", "backup-entries"])
def test_the_guard_reads_the_same_with_each_awk(guard: Guard, flatcar_disk: Path, damage: str | None) -> None:
    """Flatcar's awk is gawk, the test machines' mawk: both must read every disk the same, word for word."""
    install_update(flatcar_disk, USR_A)
    if damage:
        corrupt(flatcar_disk, damage)
    for booted in (USR_B, USR_A):
        guard.cmdline(cmdline_for(booted))
        guard.usr = usr_device(flatcar_disk, partuuid=booted)
        mawk, gawk = (guard.state(_with_awk(guard, awk)) for awk in ("mawk", "gawk"))
        assert mawk == gawk
        if damage is None:
            assert mawk[0] == ("unmarked" if booted == USR_B else "marked")
        else:  # the awk reader takes a usable copy, sgdisk warns: never marked
            assert mawk[0] == "unknown", mawk[1]
