"""The real-update scenario of ``vm-test --image`` without a VM (fast tier): what it finds in a build's
directory, the commands it runs (ssh and scp checked by the real ``ssh -G``, flatcar-update's argv
against flatcar-update's own rules for extension names), the command's bad input, and its steps driven
against a stand-in Flatcar machine that plays update_engine, flatcar-postinst and GRUB's gptprio, so
that every way the update can go wrong makes the scenario fail with its reason.

No real image has been through the scenario (none exists on the machines this suite runs on)."""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from piccolo_build.cli import run
from piccolo_build.run import Completed
from piccolo_build.vm import image, payload_update
from piccolo_build.vm.machine import Failed
from piccolo_build.vm.payload_update import GUEST_DIR, SLOTS_SCRIPT, Timeouts, Update
from tests.fixtures.payloads import make_key, signed_payload, unsigned_payload

OLD, NEW = "4459.2.4", "4593.2.5+piccolo-7"
OEM = "flatcar_test_update-oem-qemu.gz"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("key"))[0]


def version_txt(version: str) -> str:
    """build_image's version.txt."""
    vid = version.partition("+")[0]
    return (
        f"FLATCAR_VERSION={version}\nFLATCAR_VERSION_ID={vid}\n"
        'FLATCAR_BUILD_ID=""\nFLATCAR_SDK_VERSION=4593.0.0\n'
    )


def new_build(where: Path, key: Path, *, version: str | None = NEW) -> Path:
    """A board directory of a new build: the payloads (real format, signed), version.txt."""
    where.mkdir(parents=True)
    (where / payload_update.PAYLOAD).write_bytes(signed_payload(b"usr" * 5000, key))
    (where / OEM).write_bytes(signed_payload(b"oem" * 2000, key))
    if version is not None:
        (where / "version.txt").write_text(version_txt(version))
    return where


def old_release(where: Path, version: str | None = OLD) -> Path:
    where.mkdir(parents=True)
    for name in (image.IMAGE_NAMES[0], image.CODE_NAMES[1], image.VARS_NAMES[1]):
        (where / name).write_bytes(b"\0" * 4096)
    if version is not None:
        (where / "version.txt").write_text(version_txt(version))
    return where


# -- what the scenario reads and runs -------------------------------------------------------------------


def test_the_update_is_read_from_the_new_build(tmp_path: Path, key: Path) -> None:
    new = new_build(tmp_path / "new", key)
    (new / "flatcar_test_update-flatcar-zfs.gz").write_bytes(signed_payload(b"zfs" * 100, key))
    u = payload_update.find_update(new, None)
    assert u.payload == new / "flatcar_test_update.gz"
    assert u.extensions == (new / OEM, new / "flatcar_test_update-flatcar-zfs.gz")
    assert (u.version, u.version_id) == (NEW, "4593.2.5")
    assert payload_update.find_update(new, "4593.2.6").version == "4593.2.6"  # --to-version wins
    argv = payload_update.flatcar_update_argv(u)
    assert argv == [
        "sudo", "flatcar-update", "-V", NEW, "-P", f"{GUEST_DIR}/flatcar_test_update.gz",
        "-E", f"{GUEST_DIR}/{OEM}", "-E", f"{GUEST_DIR}/flatcar_test_update-flatcar-zfs.gz", "-A",
    ]  # fmt: skip
    # flatcar-update's own rules: -E takes files named (flatcar_test_update-)oem-ID.gz / flatcar-NAME.gz,
    # and a machine with the qemu OEM needs its payload among them.
    extensions = [argv[i + 1] for i, a in enumerate(argv) if a == "-E"]
    assert all(re.fullmatch(r"(flatcar|oem).*gz", Path(e).name) for e in extensions)
    assert re.search(r"[ /](flatcar_test_update-)?oem-qemu.gz ", f" {' '.join(extensions)} ")


def test_ssh_and_scp_reach_the_vm_on_loopback_with_the_run_key_only(tmp_path: Path) -> None:
    p = image.Prepared(tmp_path, tmp_path / "o", tmp_path / "v", tmp_path / "c", tmp_path / "i",
                       tmp_path / "id_ed25519", 40222)  # fmt: skip
    p.key.write_text("a key\n")  # ssh -G lists an identity file only when it exists
    scp = image.scp_argv(p, [tmp_path / "a.gz", tmp_path / "b.gz"], GUEST_DIR)
    assert scp[0].endswith("/scp") and scp[scp.index("-P") + 1] == "40222"
    assert scp[-3:] == [str(tmp_path / "a.gz"), str(tmp_path / "b.gz"), f"core@127.0.0.1:{GUEST_DIR}/"]
    ssh = image.ssh_argv(p, "true")
    assert ssh[-2:] == ["core@127.0.0.1", "true"]
    # The real ssh says what it would do with these options (ssh -G: the configuration, no connection).
    shown = subprocess.run(
        ["ssh", "-G", *ssh[1:-1]], capture_output=True, text=True, check=True, timeout=10
    ).stdout.splitlines()
    for line in ("hostname 127.0.0.1", "user core", "port 40222", "batchmode yes", "identitiesonly yes",
                 "stricthostkeychecking false", "userknownhostsfile /dev/null", "connecttimeout 5",
                 f"identityfile {tmp_path / 'id_ed25519'}"):  # fmt: skip
        assert line in shown
    assert [ln for ln in shown if ln.startswith("identityfile ")] == [f"identityfile {p.key}"]
    assert scp[1:-3] == [*image.ssh_options(p), "-P", "40222"]


# -- bad input: one line, exit 2, before anything boots -------------------------------------------------


def _refused(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert run(["vm-test", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists(), "nothing may be written for a refused run"
    return err.splitlines()[0]


def test_option_misuse_is_one_line(tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new, old, out = new_build(tmp_path / "new", key), old_release(tmp_path / "old"), tmp_path / "out"
    assert "runs only on real images" in _refused(["--scenario", "real-update"], out, capsys)
    assert "needs --previous-image" in _refused(
        ["--image", str(new), "--scenario", "real-update"], out, capsys
    )
    assert "--previous-image is used only by --scenario real-update" in _refused(
        ["--image", str(new), "--previous-image", str(old)], out, capsys
    )
    assert "--to-version is used only by" in _refused(["--image", str(new), "--to-version", NEW], out, capsys)
    assert "'two-disks' runs only on the stand-in" in _refused(
        ["--image", str(new), "--scenario", "two-disks"], out, capsys
    )
    ask = ["--image", str(new), "--previous-image", str(old), "--scenario", "real-update"]
    assert "--to-version 'latest': not a version" in _refused([*ask, "--to-version", "latest"], out, capsys)
    assert f"is already {OLD}" in _refused([*ask, "--to-version", OLD], out, capsys)
    assert "--previous-image" in _refused(
        ["--image", str(new), "--previous-image", str(tmp_path / "nope"), "--scenario", "real-update"],
        out,
        capsys,
    )


def test_a_build_without_what_the_update_needs_is_refused(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, out = old_release(tmp_path / "old"), tmp_path / "out"

    def refused(new: Path) -> str:
        args = ["--image", str(new), "--previous-image", str(old), "--scenario", "real-update"]
        return _refused(args, out, capsys)

    new = new_build(tmp_path / "no-version", key, version=None)
    assert "no version.txt to read the new version from" in refused(new)
    assert run(["vm-test", "--image", str(new), "--previous-image", str(old), "--scenario", "real-update",
                "--to-version", "x", "--out", str(out)]) == 2  # fmt: skip
    capsys.readouterr()
    (new / "version.txt").write_text("FLATCAR_VERSION_ID=4593.2.5\n")
    assert "FLATCAR_VERSION: not set" in refused(new)

    new = new_build(tmp_path / "garbage", key)
    (new / payload_update.PAYLOAD).write_bytes(b"<html>not found</html>")
    assert "not an update payload (no CrAU magic)" in refused(new)
    (new / payload_update.PAYLOAD).write_bytes(unsigned_payload(b"usr" * 100))
    assert "the payload is not signed" in refused(new)
    (new / payload_update.PAYLOAD).unlink()
    (new / payload_update.PAYLOAD).mkdir()
    assert "no flatcar_test_update.gz" in refused(new)

    new = new_build(tmp_path / "no-oem", key)
    (new / OEM).unlink()
    assert "flatcar_test_update-oem-qemu.gz is missing" in refused(new)
    (new / OEM).write_bytes(b"CrAU\0")
    assert "too short for an update payload" in refused(new)


def test_list_names_the_opt_in_scenario_after_the_stand_ins(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["vm-test", "--list"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("model ")]
    assert lines[-1].split()[0] == "real-update" and "--previous-image" in lines[-1]


# -- the steps, against a stand-in Flatcar machine ------------------------------------------------------


class FakeFlatcar:
    """A Flatcar machine as the steps see it over SSH: two USR slots with gptprio bits, a version per
    slot, update_engine's status, flatcar-update's checks and postinstall marking, a reboot with GRUB's
    choice, piccolod's gate and update_engine's later marking. Any command it does not know fails the test."""

    def __init__(
        self,
        root: Path,
        *,
        installs: str | None = None,
        new_slot_boots: bool = True,
        marks: bool = True,
        corrupt_copy: bool = False,
        gate_passes: bool = True,
    ) -> None:
        self.files = root / "guest"
        self.slots = {"USR-A": [1, 0, 1], "USR-B": [0, 0, 0]}  # priority, tries, successful
        self.version = {"USR-A": OLD, "USR-B": ""}
        self.booted, self.boot, self.health_polls, self.slot_polls = "USR-A", 1, 0, 0
        self.status, self.new_version = "UPDATE_STATUS_IDLE", ""
        self.installs, self.new_slot_boots, self.marks, self.corrupt = (
            installs,
            new_slot_boots,
            marks,
            corrupt_copy,
        )
        self.gate_passes = gate_passes
        self.commands: list[str] = []
        self.marked = False

    # Guest
    def run(self, command: str, timeout: float = 300.0) -> Completed:
        self.commands.append(command)
        code, out, err = self._answer(command)
        return Completed(("ssh", command), code, out, err)

    def copy(self, files: Sequence[Path], dest: str, timeout: float) -> None:
        assert dest == GUEST_DIR and (self.files / dest.lstrip("/")).is_dir()
        for f in files:
            shutil.copyfile(f, self.files / dest.lstrip("/") / f.name)
        if self.corrupt:
            target = self.files / dest.lstrip("/") / files[0].name
            target.write_bytes(target.read_bytes()[:-1])

    def console(self) -> str:
        return ""

    def mark_boot(self) -> None:
        pass

    def _path(self, guest: str) -> Path:
        return self.files / guest.lstrip("/")

    def _answer(self, command: str) -> tuple[int, str, str]:
        argv = shlex.split(command)
        if command == "cat /proc/sys/kernel/random/boot_id":
            return 0, f"boot-{self.boot}\n", ""
        if command in {
            "systemctl is-system-running --wait",
            "systemctl list-units --failed --no-legend --plain",
        }:
            return 0, "running\n" if "is-system" in command else "", ""
        if command.startswith("journalctl -b "):
            return 0, "piccolod: gate passed\n", ""
        if argv[0] == "curl" and argv[-1] == image.HEALTH_URL:
            self.health_polls += 1
            passed = self.boot == 1 or (self.gate_passes and self.health_polls > 2)
            doc = '{"startup_health_check": "%s"}' % ("passed" if passed else "pending")
            return 0, f"{doc}\n{200 if passed else 503}", ""
        if command == "cat /etc/os-release":
            v = self.version[self.booted]
            return 0, f'NAME="Flatcar"\nVERSION={v}\nVERSION_ID={v.partition("+")[0]}\n', ""
        if argv[:3] == ["sudo", "sh", "-c"]:
            assert argv[3] == SLOTS_SCRIPT
            self._update_engine_marks()
            rows = [f"slot {label} {p} {t} {s}" for label, (p, t, s) in self.slots.items()]
            return 0, "\n".join([f"booted {self.booted}", *rows]) + "\n", ""
        if argv[:2] == ["mkdir", "-p"]:
            self._path(argv[2]).mkdir(parents=True, exist_ok=True)
            return 0, "", ""
        if argv[0] == "sha256sum":
            sums = [f"{hashlib.sha256(self._path(a).read_bytes()).hexdigest()}  {a}" for a in argv[1:]]
            return 0, "\n".join(sums) + "\n", ""
        if argv[:2] == ["sudo", "flatcar-update"]:
            return self._flatcar_update(argv[2:])
        if command == "sudo update_engine_client -status":
            return 0, f"LAST_CHECKED_TIME=0\nCURRENT_OP={self.status}\nNEW_VERSION={self.new_version}\n", ""
        if argv[:2] == ["rm", "-rf"]:
            shutil.rmtree(self._path(argv[2]))
            return 0, "", ""
        if command == "sudo systemctl reboot":
            self._reboot()
            return 255, "", "Connection to 127.0.0.1 closed by remote host."
        if command == "sudo systemctl poweroff":
            return 0, "", ""
        raise AssertionError(f"the stand-in does not know {command!r}")

    def _flatcar_update(self, args: list[str]) -> tuple[int, str, str]:
        version, payload, extensions = "", "", []
        while args:
            opt = args.pop(0)
            if opt == "-V":
                version = args.pop(0)
            elif opt == "-P":
                payload = args.pop(0)
            elif opt == "-E":
                extensions.append(args.pop(0))
            else:
                assert opt == "-A", opt
        assert version and self._path(payload).is_file()
        if not re.search(r"[ /](flatcar_test_update-)?oem-qemu.gz ", f" {' '.join(extensions)} "):
            return 1, "", "Error: system requires 'qemu' OEM extension but not passed in --extension\n"
        other = "USR-B" if self.booted == "USR-A" else "USR-A"
        self.version[other] = self.installs or version
        self.slots[other] = [2, 1, 0]  # flatcar-postinst: try the new slot once, first
        self.slots[self.booted][0] = 1
        self.status, self.new_version = "UPDATE_STATUS_UPDATED_NEED_REBOOT", version
        return 0, "Done, please make sure to reboot\n", ""

    def _reboot(self) -> None:
        while True:  # GRUB's gptprio.next, then the boot; a slot that does not boot costs its try
            usable = [lab for lab, (p, t, s) in self.slots.items() if p > 0 and (t > 0 or s)]
            chosen = max(usable, key=lambda lab: self.slots[lab][0])
            if self.slots[chosen][1] > 0:
                self.slots[chosen][1] -= 1
            if chosen == "USR-A" or self.new_slot_boots:
                break
        self.booted, self.boot, self.health_polls, self.slot_polls = chosen, self.boot + 1, 0, 0
        self.status = "UPDATE_STATUS_IDLE"

    def _update_engine_marks(self) -> None:
        """update_engine marks the booted slot some time after piccolod's gate passed."""
        if self.boot > 1 and self.health_polls > 2 and self.marks:
            self.slot_polls += 1
            if self.slot_polls > 2:
                self.slots[self.booted] = [2, 0, 1]
                self.slots["USR-A" if self.booted == "USR-B" else "USR-B"][0] = 1
                self.marked = True


FAST = Timeouts(boot=5, copy=5, update=5, gate=5, mark=5, poll=0)


def _update(tmp_path: Path, key: Path) -> Update:
    return payload_update.find_update(new_build(tmp_path / "new", key), None)


def test_the_steps_update_and_prove_the_new_slot(tmp_path: Path, key: Path) -> None:
    g, said = FakeFlatcar(tmp_path), list[str]()
    notes = payload_update.steps(g, _update(tmp_path, key), OLD, said.append, FAST)
    assert g.booted == "USR-B" and g.marked and g.slots["USR-B"] == [2, 0, 1]
    assert notes["slots"] == f"USR-A {OLD} -> USR-B {NEW}"
    assert said[0] == f"boot 1: {OLD} on USR-A; copying 2 payload(s)"
    assert {"ssh", "copy", "update", "reboot", "gate", "marked"} <= notes.keys()
    ran = g.commands
    update = shlex.join(payload_update.flatcar_update_argv(_update(tmp_path / "again", key)))
    assert update in ran and ran.index(update) < ran.index("sudo systemctl reboot")
    assert ran[-1] == "sudo systemctl poweroff"
    assert not (g.files / GUEST_DIR.lstrip("/")).exists()  # the copies are removed before the reboot


@pytest.mark.parametrize(
    ("flaws", "previous", "reason"),
    [
        ({"new_slot_boots": False}, OLD, "boot 2 (boot-2) runs USR-A, not the updated USR-B"),
        ({"installs": "4593.2.4"}, OLD, "boot 2: VERSION 4593.2.4 VERSION_ID 4593.2.4, expected"),
        ({"marks": False}, OLD, "USR-B P2 T0 S0 0.2s after the gate passed: not marked successful"),
        ({"gate_passes": False}, OLD, "boot 2: health 503, startup_health_check pending after 0.2s"),
        ({"corrupt_copy": True}, OLD, "flatcar_test_update.gz: the copy in the VM differs"),
        ({}, "4400.0.0", f"boot 1: VERSION {OLD}, the previous image's version.txt 4400.0.0"),
    ],
)
def test_the_steps_fail_with_the_reason(
    tmp_path: Path, key: Path, flaws: dict[str, object], previous: str, reason: str
) -> None:
    g = FakeFlatcar(tmp_path, **flaws)  # type: ignore[arg-type]
    short = 0.2 if flaws.get("marks") is False or flaws.get("gate_passes") is False else 5
    fast = Timeouts(boot=5, copy=5, update=5, gate=short, mark=short, poll=0)
    with pytest.raises(Failed, match=re.escape(reason)):
        payload_update.steps(g, _update(tmp_path, key), previous, lambda _m: None, fast)


def test_without_the_oem_payload_flatcar_update_refuses(tmp_path: Path, key: Path) -> None:
    u = _update(tmp_path, key)
    with pytest.raises(Failed, match="flatcar-update exited 1: Error: system requires 'qemu' OEM extension"):
        payload_update.steps(FakeFlatcar(tmp_path), Update(u.payload, (), u.version), OLD, print, FAST)
