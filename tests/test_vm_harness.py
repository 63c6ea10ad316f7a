"""The VM harness's parts that need no VM (fast tier): GRUB's gptprio on a real Flatcar-shaped disk made by
sgdisk and written by cgpt, the initrd archive, the --image preparation (overlay, UEFI variables, SSH
key, Ignition) and QEMU command line, the reports, the command's bad input, the boot models, the cache of
their stand-ins and the check that the initrd model merged in the initrd; and (``vm``, ``slow``: it needs
the sid package tree) the initrd model's dracut initrd, read without booting it."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from piccolo_build.cli import run
from piccolo_build.config import load_config
from piccolo_build.errors import PiccoloError
from piccolo_build.vm import disk, dracut, guest, image, initrd, models, qemu, report, standin
from piccolo_build.vm.machine import initrd_merge_problems
from piccolo_build.vm.runner import Outcome, line

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def flatcar_raw(tmp_path: Path) -> Path:
    return disk.make_disk(tmp_path / "disk.raw", {})


def test_disk_has_flatcars_layout_and_fresh_image_bits(flatcar_raw: Path) -> None:
    s = disk.slots(flatcar_raw)
    assert (s["USR-A"].number, s["USR-A"].partuuid) == (3, disk.USR_A)
    assert (s["USR-B"].number, s["USR-B"].partuuid) == (4, disk.USR_B)
    assert s["USR-A"].bits() == "P1 T0 S1"
    assert s["USR-B"].bits() == "P0 T0 S0"
    out = subprocess.run(
        ["cgpt", "show", "-i", "4", "-P", str(flatcar_raw)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0"


def test_gptprio_tries_an_update_once_then_falls_back(flatcar_raw: Path) -> None:
    assert disk.gptprio_next(flatcar_raw).label == "USR-A"
    disk.install_update(flatcar_raw, "USR-B")
    assert disk.slots(flatcar_raw)["USR-B"].bits() == "P2 T1 S0"
    assert disk.slots(flatcar_raw)["USR-A"].bits() == "P1 T0 S1"
    chosen = disk.gptprio_next(flatcar_raw)
    assert chosen.label == "USR-B"
    assert disk.slots(flatcar_raw)["USR-B"].bits() == "P2 T0 S0"  # the one try is used up
    assert disk.gptprio_next(flatcar_raw).label == "USR-A"  # never marked: GRUB falls back
    disk.set_slot(flatcar_raw, "USR-A", priority=0, tries=0, successful=False)
    with pytest.raises(PiccoloError, match="no bootable USR slot"):
        disk.gptprio_next(flatcar_raw)


def test_copy_slot_and_put_partition_are_sparse_and_exact(flatcar_raw: Path, tmp_path: Path) -> None:
    part = tmp_path / "p.img"
    part.write_bytes(b"\0" * 4096 + b"usr!" + b"\0" * 4092)
    disk.put_partition(flatcar_raw, 3, part)
    disk.copy_slot(flatcar_raw, "USR-A", "USR-B")
    off_b = disk.offsets()[4][0]
    with flatcar_raw.open("rb") as f:
        f.seek(off_b + 4096)
        assert f.read(4) == b"usr!"
    assert flatcar_raw.stat().st_blocks * 512 < 64 * disk.MIB  # still sparse


def test_initrd_is_a_newc_archive_with_init_first_class(tmp_path: Path) -> None:
    data = initrd.cpio([("bin", stat.S_IFDIR | 0o755, b""), ("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    assert data.startswith(b"070701")
    assert data.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert len(data) % 4 == 0
    listing = subprocess.run(["busybox", "cpio", "-t"], input=data, capture_output=True, check=True).stdout
    assert listing.split() == [b"bin", b"init"]


def test_initrd_finds_the_slot_by_partuuid_in_gpt_byte_order() -> None:
    # The init script swaps the first three fields to the GPT's mixed-endian order.
    assert "${u:6:2}${u:4:2}${u:2:2}${u:0:2}${u:10:2}${u:8:2}${u:14:2}${u:12:2}${u:16:16}" in initrd.INIT
    import uuid

    u = disk.USR_B.replace("-", "")
    swapped = u[6:8] + u[4:6] + u[2:4] + u[0:2] + u[10:12] + u[8:10] + u[14:16] + u[12:14] + u[16:32]
    assert swapped == uuid.UUID(disk.USR_B).bytes_le.hex()


def test_standin_command_line(tmp_path: Path) -> None:
    spec = qemu.Spec(
        tmp_path,
        tmp_path / "vmlinuz",
        tmp_path / "initrd",
        "mount.usr=PARTUUID=x",
        [tmp_path / "a.raw", tmp_path / "b.raw"],
    )
    argv = qemu.argv(spec, tmp_path / "swtpm.sock")
    joined = " ".join(argv)
    assert "-no-reboot" in argv and "-nic none" in joined
    assert f"file={tmp_path / 'a.raw'},format=raw,if=virtio,cache=unsafe,index=0" in argv
    assert f"file={tmp_path / 'b.raw'},format=raw,if=virtio,cache=unsafe,index=1" in argv
    assert "tpm-crb,tpmdev=tpm0" in argv and "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0" in argv
    assert argv[argv.index("-accel") + 1].startswith("tcg")
    assert qemu.accel_args("kvm")[:2] == ["-accel", "kvm"]


def _artefacts(where: Path) -> image.Artefacts:
    where.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(where / image.IMAGE_NAMES[0]), "64M"], check=True
    )
    (where / image.CODE_NAMES[1]).write_bytes(b"\0" * 4096)
    (where / image.VARS_NAMES[1]).write_bytes(b"vars" * 1024)
    return image.find_artefacts(where)


def test_image_preparation_never_writes_the_image(tmp_path: Path) -> None:
    art = _artefacts(tmp_path / "img")
    before = art.image.read_bytes()
    p = image.prepare(art, tmp_path / "run")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(p.overlay)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2" and info["backing-filename"] == str(art.image.resolve())
    assert p.efi_vars.read_bytes() == art.efi_vars.read_bytes() and p.efi_vars != art.efi_vars
    doc = json.loads(p.config.read_text())
    assert doc["ignition"]["version"] == "3.3.0"
    assert doc["passwd"]["users"][0]["name"] == "core"
    assert doc["passwd"]["users"][0]["sshAuthorizedKeys"] == [p.key.with_suffix(".pub").read_text().strip()]
    assert {"name": "locksmithd.service", "mask": True} in doc["systemd"]["units"]
    assert not any(u["name"].startswith("update-engine") for u in doc["systemd"]["units"])
    argv = image.argv(p, "kvm", tmp_path / "swtpm.sock")
    assert f"name=opt/org.flatcar-linux/config,file={p.config}" in argv
    assert f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{p.ssh_port}-:22" in argv
    assert f"if=pflash,unit=0,readonly=on,format=raw,file={art.efi_code.resolve()}" in argv
    assert f"if=pflash,unit=1,format=raw,file={p.efi_vars}" in argv
    assert f"if=virtio,format=qcow2,file={p.overlay}" in argv
    assert not any(a.startswith("file=" + str(art.image)) for a in argv)
    assert art.image.read_bytes() == before


def test_image_directory_without_artefacts_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["vm-test", "--image", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no image" in err and "Traceback" not in err


def test_unknown_scenario_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["vm-test", "--scenario", "nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    assert run(["vm-test", "--scenario", "two-disks", "-s", "x"]) == 2  # -s is --set, as everywhere
    assert "--set 'x': expected KEY=VALUE" in capsys.readouterr().err
    assert run(["vm-test", "--model", "early"]) == 2
    assert "unknown model 'early'" in capsys.readouterr().err
    assert run(["vm-test", "--image", "/nonexistent", "--model", "initrd"]) == 2
    assert "--model is for the stand-in" in capsys.readouterr().err
    assert run(["vm-test", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in listed if ln.startswith("model ")] == ["late", "initrd"]
    names = [ln.split()[0] for ln in listed if not ln.startswith("model ")]
    assert names == [
        "healthy-boot",
        "docker-stopped",
        "healthy-update",
        "broken-update",
        "crash-before-userspace",
        "two-disks",
        "real-update",  # --image only, opt-in (tests/test_vm_image.py)
    ]


def test_reports(tmp_path: Path) -> None:
    outs = [
        Outcome("healthy-boot", True, 40.0, notes={"ready": "33s"}, boots=1, ready=[33.0]),
        Outcome("two-disks", False, 90.0, "USR-B marked while the gate is pending", boots=1, logs=tmp_path),
    ]
    root = ET.parse(report.junit(outs, tmp_path / "j" / "junit.xml")).getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["healthy-boot"].find("failure") is None
    assert "gate is pending" in (cases["two-disks"].find("failure").get("message") or "")  # type: ignore[union-attr]
    t = report.tap(outs)
    assert "ok 1 - healthy-boot" in t and "not ok 2 - two-disks" in t
    assert line(outs[0]).startswith("ok   healthy-boot") and "READY 33s" in line(outs[0])
    assert str(tmp_path) in line(outs[1])


# -- the boot models ---------------------------------------------------------------------------------


def test_model_table() -> None:
    assert [m.name for m in models.MODELS] == ["late", "initrd"]  # the default order of --model
    late, initrd_model = models.BY_NAME["late"], models.BY_NAME["initrd"]
    assert (late.suite, late.initrd, late.merges_in_initrd) == ("trixie", "busybox", False)
    assert (initrd_model.suite, initrd_model.initrd, initrd_model.merges_in_initrd) == ("sid", "dracut", True)
    assert "stable-4593" in late.description
    assert "beta-4757" in initrd_model.description and "alpha-4790" in initrd_model.description
    for m in models.MODELS:  # every suite has its package list; sid's makes the initrd with dracut
        assert set(guest.PACKAGES) <= set(guest.packages(m.suite))
    assert {"dracut-core", "systemd-cryptsetup"} <= set(guest.packages("sid"))
    assert "dracut-core" not in guest.packages("trixie")


def test_cache_keeps_every_models_standin_and_drops_the_stale_of_the_same_model(tmp_path: Path) -> None:
    standins = tmp_path / "standin"
    names = ["late-old", "late-older", ".late-crashed.tmp", "initrd-kept", ".initrd-building.tmp",
             "0123456789abcdef", ".late-new.tmp"]  # fmt: skip
    for name in names:
        (standins / name).mkdir(parents=True)
    standin._remove_stale(standins, models.LATE, keep=".late-new.tmp")
    assert sorted(p.name for p in standins.iterdir()) == [
        ".initrd-building.tmp",
        ".late-new.tmp",
        "initrd-kept",
    ]
    standin._remove_stale(standins, models.INITRD, keep="initrd-new")
    assert sorted(p.name for p in standins.iterdir()) == [".late-new.tmp"]


SWITCH = "[   16.40] localhost systemd[1]: Switching root."
MERGED_IN_INITRD = "[   15.23] localhost (sd-merge)[149]: Merged extensions into '/sysroot/usr'."
SKIPPED_LATE = (
    "[   28.17] piccolo-vm (sd-merge)[234]: Skipping extension refresh because no change was found, "
    "use --always-refresh=yes to always do a refresh."
)
STARTING = "[   30.71] piccolo-vm systemd[1]: Starting piccolod.service - Piccolo OS health agent..."
RELOADING = "[   29.90] piccolo-vm systemd[1]: Reloading requested from client PID 250 ('systemctl')..."
MERGED_LATE = "[   28.50] piccolo-vm (sd-merge)[234]: Merged extensions into '/usr'."


def test_initrd_merge_check_passes_a_merge_in_the_initrd_and_fails_a_late_one() -> None:
    assert initrd_merge_problems("\n".join([MERGED_IN_INITRD, SWITCH, SKIPPED_LATE, STARTING])) == []
    late = initrd_merge_problems("\n".join([SWITCH, MERGED_LATE, RELOADING, STARTING]))
    assert any("did not merge" in p for p in late)
    assert any("after switch-root" in p for p in late)
    assert any("first transaction" in p for p in late)
    assert initrd_merge_problems("\n".join([MERGED_IN_INITRD, SWITCH])) == [
        "PID 1 never started piccolod.service"
    ]
    assert initrd_merge_problems(MERGED_IN_INITRD) == ["no switch from the initrd in the journal"]


def test_read_cpio_reads_what_cpio_writes() -> None:
    link = stat.S_IFLNK | 0o777
    data = initrd.cpio(
        [("etc", stat.S_IFDIR | 0o755, b""), ("etc/l", link, b"/target"), ("f", 0o100644, b"x")]
    )
    entries = initrd.read_cpio(data + b"\0" * 512 + initrd.cpio([("g", 0o100644, b"yz")]))
    assert entries["etc/l"] == (link, b"/target")
    assert entries["f"][1] == b"x" and entries["g"][1] == b"yz"


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.privileged
def test_initrd_models_initrd_merges_the_sysext_into_sysroot_and_reboots_on_failure(
    vm_outcomes: dict[tuple[str, str], dict[str, object]],
) -> None:
    """The initrd model's dracut initrd, as the stand-in build makes it (no VM is booted; the build needs
    the sid package tree, so this is not in the fast tier): the sysroot merge unit is there and enabled
    for initrd.target, our emergency.service reboots with the /usr mark, the probe unit answers, and the
    kernel modules for the disk, its file system and the merge (loop, squashfs, overlay) are in it. It
    waits for the session's background VM run (``vm_outcomes``), which builds the same stand-in into the
    same cache: two builds of one key at once would clobber each other."""
    del vm_outcomes  # asked for its wait only: the build below finds the run's stand-in in the cache
    cfg = load_config(ROOT / "piccolo.yaml", env={})
    s = standin.build(cfg, standin.default_cache(), model=models.INITRD)
    assert s.model is models.INITRD and s.where.name == f"initrd-{s.key}"
    entries = initrd.read_cpio(s.initrd.read_bytes())
    _mode, unit = entries[f"usr/lib/systemd/system/{dracut.SYSROOT_MERGE}"]
    assert b"--root=/sysroot" in unit and b"ConditionPathExists=/etc/initrd-release" in unit
    wants = [k for k in entries if k.endswith(f"initrd.target.wants/{dracut.SYSROOT_MERGE}")]
    assert wants and all(stat.S_ISLNK(entries[k][0]) for k in wants)
    assert "usr/bin/systemd-sysext" in entries and "etc/initrd-release" in entries
    assert b"initrd-failed" in entries["etc/systemd/system/emergency.service"][1]
    script = entries[dracut.FAILED_SCRIPT.lstrip("/")][1].decode()
    assert initrd.USR_FAIL_MARK in script and "reboot" in script
    assert initrd.PROBE_MARK.encode() in entries["etc/systemd/system/piccolo-vm-probe.service"][1]
    modules = {Path(k).name for k in entries if k.endswith(".ko")}
    assert {"virtio_blk.ko", "virtio_pci.ko", "ext4.ko", "loop.ko", "squashfs.ko", "overlay.ko"} <= modules
