"""The VM harness's parts that need no VM (fast tier): GRUB's gptprio on a real Flatcar-shaped disk made by
sgdisk and written by cgpt, the initrd archive, the --image preparation (overlay, UEFI variables, SSH
key, Ignition) and QEMU command line, the reports, and the command's bad input."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from piccolo_build.cli import run
from piccolo_build.errors import PiccoloError
from piccolo_build.vm import disk, image, initrd, qemu, report
from piccolo_build.vm.runner import Outcome, line


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
