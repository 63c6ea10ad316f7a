"""``vm-test --image NEW --previous-image OLD --scenario real-update``: a real update payload, installed
with ``flatcar-update -P`` on the previous release's image, the way an administrator installs one
without an update server.

The VM boots OLD's ``qemu_uefi`` image (prepared as in :mod:`piccolo_build.vm.image`). The harness copies
NEW's update payload ``flatcar_test_update.gz`` and its extension payloads (the OEM payload
``flatcar_test_update-oem-qemu.gz`` at least: the qemu image is an OEM image, and flatcar-update refuses
a local payload without the payload of the machine's OEM) into the VM with scp, then runs, as root::

    flatcar-update -V <version> -P <payload> -E <oem payload>... -A

flatcar/init's ``flatcar-update`` serves those files to update_engine from a temporary Omaha server on
localhost (``-V`` is the version that server announces, ``-E`` names each extension payload by its file
name, ``-A`` writes ``SERVER=disabled`` to ``/etc/flatcar/update.conf`` afterwards, so the machine under
test never asks a real server for another update). It exits 0 only when update_engine reports
``UPDATE_STATUS_UPDATED_NEED_REBOOT``. Its ``-D``/``-F`` (bind-mount a key downloaded from GitHub over the
image's update key) are never used: the payloads must verify with the key the image carries, Flatcar's
development key unless the release configured ``release.update_key``.

Then: the other USR slot must be marked to be tried, the reboot must give a new ``boot_id`` on that slot
with NEW's ``VERSION``/``VERSION_ID``, piccolod's gate must pass (``startup_health_check: passed``, health
200), update_engine must mark the slot successful (45 s after it starts, which the gate allows), and both
boots must pass kola's checks. The steps talk to the VM through :class:`Guest`, so a recording stand-in
can drive them in the fast tests; no real image has been through them yet.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from piccolo_build import release, versionfile
from piccolo_build.errors import PiccoloError, StepFailed
from piccolo_build.payload import PayloadError, read_payload
from piccolo_build.run import Completed, run
from piccolo_build.vm import disk, image
from piccolo_build.vm.machine import Failed, expect

PAYLOAD = "flatcar_test_update.gz"
EXTENSION_GLOB = f"{release.OEM_PAYLOAD_PREFIX}flatcar-*.gz"  # Flatcar's own optional extensions
VERSION_FILE = "version.txt"  # build_image's: FLATCAR_VERSION=..., FLATCAR_VERSION_ID=...
GUEST_DIR = "/var/tmp/piccolo-vm-update"  # noqa: S108 - in the VM, made by the harness
NEED_REBOOT = "UPDATE_STATUS_UPDATED_NEED_REBOOT"
USR_PARTITIONS = {label: number for label, (number, _uuid) in disk.SLOTS.items()}
# One line per USR slot: "slot LABEL PRIORITY TRIES SUCCESSFUL", and "booted LABEL" for the slot under
# /usr (rootdev -s: the partition below dm-verity).
SLOTS_SCRIPT = (
    'dev=$(rootdev -s /usr) && disk=/dev/$(lsblk -no PKNAME "$dev") && '
    'echo "booted $(lsblk -no PARTLABEL "$dev")" && for n in '
    + " ".join(map(str, USR_PARTITIONS.values()))
    + '; do echo "slot $(cgpt show -i $n -l "$disk") $(cgpt show -i $n -P "$disk") '
    '$(cgpt show -i $n -T "$disk") $(cgpt show -i $n -S "$disk")"; done'
)


@dataclass(frozen=True)
class Update:
    """What NEW offers: its payload, its extension payloads and the version they install."""

    payload: Path
    extensions: tuple[Path, ...]
    version: str  # FLATCAR_VERSION: what -V announces and os-release's VERSION says

    @property
    def version_id(self) -> str:
        """os-release's VERSION_ID: the version without its ``+BUILD_ID``."""
        return self.version.partition("+")[0]

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.payload, *self.extensions)


def _check_payload(path: Path) -> None:
    """A payload update_engine could read: its header, its manifest, a signature (bounded: reads the
    manifest only)."""
    try:
        payload = read_payload(path)
    except PayloadError as exc:
        raise PiccoloError(exc.message) from None
    if not payload.signed:
        raise PiccoloError(f"{path}: the payload is not signed; update_engine refuses it")


def version_of(where: Path, option: str) -> str | None:
    """FLATCAR_VERSION in ``where``'s version.txt, None without one."""
    path = where / VERSION_FILE
    if not path.exists():
        return None
    try:
        return versionfile.read_value(path, versionfile.VERSION_KEY)
    except PiccoloError as exc:
        raise PiccoloError(
            exc.message, hint=f"{option}: the directory of a build (or pass --to-version)"
        ) from None


def find_update(new: Path, version: str | None) -> Update:
    """NEW's payloads and version (``version`` overrides its version.txt); one-line errors."""
    if not new.is_dir():
        raise PiccoloError(f"--image {new}: not a directory")
    payload = new / PAYLOAD
    if not payload.is_file():
        raise PiccoloError(
            f"{new}: no {PAYLOAD} (the new build's update payload)",
            hint="--image takes a board directory of the new build or release, e.g. release/amd64-usr",
        )
    extensions = [*release.oem_payloads(new), *sorted(p for p in new.glob(EXTENSION_GLOB) if p.is_file())]
    for path in (payload, *extensions):
        _check_payload(path)
    if version is None:
        version = version_of(new, "--image")
        if version is None:
            raise PiccoloError(
                f"{new}: no {VERSION_FILE} to read the new version from",
                hint="pass --to-version VERSION (the new build's FLATCAR_VERSION)",
            )
    elif not versionfile.is_version(version):
        raise PiccoloError(f"--to-version {version!r}: not a version (NNNN.N.N[+BUILD_ID])")
    return Update(payload, tuple(extensions), version)


def flatcar_update_argv(u: Update) -> list[str]:
    """The command run in the VM (as root: flatcar-update refuses otherwise)."""
    args = ["sudo", "flatcar-update", "-V", u.version, "-P", f"{GUEST_DIR}/{u.payload.name}"]
    for ext in u.extensions:
        args += ["-E", f"{GUEST_DIR}/{ext.name}"]
    return [*args, "-A"]


@dataclass(frozen=True)
class Slots:
    booted: str
    bits: dict[str, tuple[int, int, int]]  # label: (priority, tries, successful)

    @property
    def other(self) -> str:
        return next(label for label in USR_PARTITIONS if label != self.booted)

    def show(self, label: str) -> str:
        p, t, s = self.bits[label]
        return f"{label} P{p} T{t} S{s}"


def parse_slots(text: str) -> Slots:
    """What :data:`SLOTS_SCRIPT` printed; :class:`Failed` when it is not two USR slots and a booted one."""
    booted, bits = "", {}
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["booted"] and len(words) == 2:
            booted = words[1]
        elif words[:1] == ["slot"] and len(words) == 5 and all(w.isdigit() for w in words[2:]):
            bits[words[1]] = (int(words[2]), int(words[3]), int(words[4]))
    expect(
        booted in USR_PARTITIONS and bits.keys() == USR_PARTITIONS.keys(),
        f"cannot tell the USR slots from: {text.strip()[:200]!r}",
    )
    return Slots(booted, bits)


def parse_fields(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (os-release, update_engine_client -status), quotes removed."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.replace("_", "").isalnum():
            out[key] = value.strip().strip('"')
    return out


class Guest(Protocol):
    """The VM as the steps see it."""

    def run(self, command: str, timeout: float = 300.0) -> Completed: ...

    def copy(self, files: Sequence[Path], dest: str, timeout: float) -> None: ...

    def console(self) -> str:
        """The serial console since the last :meth:`mark_boot`."""
        ...

    def mark_boot(self) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    boot: float = 600.0  # to SSH (a first boot runs Ignition and grows ROOT)
    copy: float = 1800.0  # the payloads, hundreds of MB through user-mode networking
    update: float = 2400.0  # flatcar-update: update_engine writes the whole slot
    gate: float = 300.0  # piccolod's gate decides (its deadline is 120 s by default)
    mark: float = 300.0  # update_engine marks the slot 45 s after the gate lets it start
    poll: float = 3.0

    @classmethod
    def for_accel(cls, accel: str) -> Timeouts:
        return cls() if accel == "tcg" else cls(boot=240, copy=600, update=900, gate=240, mark=180)


def _sh(g: Guest, command: str, timeout: float = 300.0) -> str:
    r = g.run(command, timeout)
    expect(
        r.returncode == 0, f"{' '.join(command.split()[:3])} exited {r.returncode}: {r.stderr.strip()[-200:]}"
    )
    return r.stdout


def wait_boot(g: Guest, old_id: str, timeout: float, poll: float) -> str:
    """The boot_id once SSH answers with one other than ``old_id`` (a new boot)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = g.run("cat /proc/sys/kernel/random/boot_id", 20)
        boot_id = r.stdout.strip()
        if r.returncode == 0 and boot_id and boot_id != old_id:
            return boot_id
        time.sleep(poll)
    raise Failed(
        f"no new boot answered SSH within {timeout:g}s" + (f" (boot_id still {old_id})" if old_id else "")
    )


def health(g: Guest) -> tuple[str, dict[str, object]]:
    """(HTTP status, document) of piccolod's health endpoint inside the VM."""
    out = g.run(f"curl -s -w '\\n%{{http_code}}' {image.HEALTH_URL}", 30).stdout
    body, _, code = out.rstrip("\n").rpartition("\n")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    return code.strip(), doc if isinstance(doc, dict) else {}


def wait_health(g: Guest, boot: str, t: Timeouts, *, passed: bool) -> None:
    """Wait for health 200 (and with ``passed``, for the gate's ``startup_health_check: passed``)."""
    t0 = time.monotonic()
    while True:
        code, doc = health(g)
        verdict = doc.get("startup_health_check")
        if code == "200" and (verdict == "passed" or not passed):
            return
        if time.monotonic() - t0 >= t.gate:
            raise Failed(f"{boot}: health {code}, startup_health_check {verdict} after {t.gate:g}s")
        time.sleep(t.poll)


def _kola(g: Guest, boot: str) -> None:
    found = image.kola_findings(lambda c: g.run(c, 300).stdout, g.console())
    expect(not found, f"{boot}: " + "; ".join(found))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def steps(  # noqa: PLR0915 - one scenario, read top to bottom
    g: Guest, u: Update, previous: str | None, say: Callable[[str], None], t: Timeouts
) -> dict[str, str]:
    """The scenario on a VM that is booting OLD; :class:`Failed` names the first expectation that did
    not hold. Returns the figures for the report."""
    notes: dict[str, str] = {}
    t0 = time.monotonic()
    first = wait_boot(g, "", t.boot, t.poll)
    notes["ssh"] = f"{time.monotonic() - t0:.0f}s"
    _kola(g, "boot 1")
    wait_health(g, "boot 1 (the previous release)", t, passed=False)
    old = parse_fields(_sh(g, "cat /etc/os-release"))
    expect(
        previous is None or old.get("VERSION") == previous,
        f"boot 1: VERSION {old.get('VERSION')}, the previous image's version.txt {previous}",
    )
    expect(old.get("VERSION") != u.version, f"boot 1 already runs {u.version}: nothing to update")
    before = parse_slots(_sh(g, f"sudo sh -c {shlex.quote(SLOTS_SCRIPT)}"))
    target = before.other
    say(f"boot 1: {old.get('VERSION')} on {before.booted}; copying {len(u.files)} payload(s)")

    t1 = time.monotonic()
    _sh(g, f"mkdir -p {GUEST_DIR}")
    g.copy(u.files, GUEST_DIR, t.copy)
    names = [f"{GUEST_DIR}/{f.name}" for f in u.files]
    copied = {}
    for ln in _sh(g, f"sha256sum {shlex.join(names)}").splitlines():
        digest, _, name = ln.partition("  ")
        copied[name] = digest
    for f, name in zip(u.files, names, strict=True):
        expect(copied.get(name) == _sha256(f), f"{name}: the copy in the VM differs from {f}")
    notes["copy"] = f"{time.monotonic() - t1:.0f}s"

    t2 = time.monotonic()
    say(f"boot 1: {shlex.join(flatcar_update_argv(u))}")
    r = g.run(shlex.join(flatcar_update_argv(u)), t.update)
    tail = " / ".join((r.stderr or r.stdout).strip().splitlines()[-2:])
    expect(r.returncode == 0, f"flatcar-update exited {r.returncode}: {tail}")
    status = parse_fields(_sh(g, "sudo update_engine_client -status"))
    expect(
        status.get("CURRENT_OP") == NEED_REBOOT,
        f"update_engine: {status.get('CURRENT_OP')}, not {NEED_REBOOT}",
    )
    expect(
        status.get("NEW_VERSION", u.version) == u.version,
        f"update_engine installed {status.get('NEW_VERSION')}, not {u.version}",
    )
    staged = parse_slots(_sh(g, f"sudo sh -c {shlex.quote(SLOTS_SCRIPT)}"))
    p, tries, ok = staged.bits[target]
    expect(
        p > staged.bits[before.booted][0] and tries > 0 and not ok,
        f"after flatcar-update: {staged.show(target)}, {staged.show(before.booted)}: not to be tried",
    )
    notes["update"] = f"{time.monotonic() - t2:.0f}s"
    _sh(g, f"rm -rf {GUEST_DIR}")

    g.mark_boot()
    g.run("sudo systemctl reboot", 30)  # the connection may drop before it answers
    t3 = time.monotonic()
    second = wait_boot(g, first, t.boot, t.poll)
    notes["reboot"] = f"{time.monotonic() - t3:.0f}s"
    now = parse_slots(_sh(g, f"sudo sh -c {shlex.quote(SLOTS_SCRIPT)}"))
    expect(now.booted == target, f"boot 2 ({second}) runs {now.booted}, not the updated {target}")
    new = parse_fields(_sh(g, "cat /etc/os-release"))
    expect(
        (new.get("VERSION"), new.get("VERSION_ID")) == (u.version, u.version_id),
        f"boot 2: VERSION {new.get('VERSION')} VERSION_ID {new.get('VERSION_ID')}, "
        f"expected {u.version} {u.version_id}",
    )

    t_up = time.monotonic()
    wait_health(g, "boot 2", t, passed=True)
    notes["gate"] = f"{time.monotonic() - t_up:.0f}s after SSH"
    t4 = time.monotonic()
    while time.monotonic() - t4 < t.mark and not now.bits[target][2]:
        time.sleep(t.poll)
        now = parse_slots(_sh(g, f"sudo sh -c {shlex.quote(SLOTS_SCRIPT)}"))
    p, tries, ok = now.bits[target]
    expect(
        ok and tries == 0 and p > now.bits[before.booted][0],
        f"boot 2: {now.show(target)} {t.mark:g}s after the gate passed: not marked successful",
    )
    notes["marked"] = f"{time.monotonic() - t4:.0f}s after the gate"
    _kola(g, "boot 2")
    notes["slots"] = f"{before.booted} {old.get('VERSION')} -> {target} {u.version}"
    g.run("sudo systemctl poweroff", 30)
    return notes


@dataclass
class SshGuest:
    """:class:`Guest` over SSH to a VM of :mod:`piccolo_build.vm.image`."""

    p: image.Prepared
    console_from: int = 0

    def run(self, command: str, timeout: float = 300.0) -> Completed:
        try:
            return run(image.ssh_argv(self.p, command), check=False, timeout=timeout)
        except StepFailed as exc:  # timed out or killed: the caller decides
            return Completed((), exc.exit_code, "", exc.message)

    def copy(self, files: Sequence[Path], dest: str, timeout: float) -> None:
        try:
            run(image.scp_argv(self.p, files, dest), timeout=timeout)
        except StepFailed as exc:
            raise Failed(f"copying the payloads: {exc.message}") from None

    def _console(self) -> str:
        try:
            return (self.p.run_dir / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console(self) -> str:
        return self._console()[self.console_from :]

    def mark_boot(self) -> None:
        self.console_from = len(self._console())


def real_update(
    previous: image.Artefacts,
    u: Update,
    run_dir: Path,
    accel: str,
    *,
    previous_version: str | None,
    say: Callable[[str], None],
) -> dict[str, str]:
    """Boot ``previous`` and update it with ``u``; raises :class:`Failed`."""
    with image.booted(previous, run_dir, accel) as (p, vm):
        say(f"real-update: booting the previous image under {accel}, SSH on 127.0.0.1:{p.ssh_port}")
        notes = steps(SshGuest(p), u, previous_version, say, Timeouts.for_accel(accel))
        vm.wait(60)
        return notes
