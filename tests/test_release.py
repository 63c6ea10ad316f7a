"""``piccolo_build.release``: artefacts, SHA256SUMS, the manifest, and real gpg signing and verification."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from piccolo_build import release
from piccolo_build.context import BuildContext
from piccolo_build.errors import PiccoloError
from tests.builder_helpers import snapshot
from tests.fixtures.fakesdk import GpgKey, generate_key, kill_agent, make_gnupghome

INFO = release.ReleaseInfo(
    piccolo_version="0.1.0",
    flatcar_tag="stable-4081.2.10",
    flatcar_commit="0" * 40,
    sdk_version="4081.1.0",
    update_group="stable",
    boards=("amd64-usr",),
    config_sha256="c" * 64,
)


def _images(root: Path, *, qcow2: bool = False, skip: str | None = None) -> Path:
    d = root / "images" / "amd64-usr" / "latest"
    d.mkdir(parents=True)
    names = [
        "flatcar_production_image.bin",
        "flatcar_production_update.bin",
        "flatcar_test_update.gz",
        "flatcar_test_update-oem-qemu.gz",
        "flatcar_production_qemu_uefi_image.img",
        f"flatcar_production_qemu_uefi_efi_code.{'qcow2' if qcow2 else 'fd'}",
        f"flatcar_production_qemu_uefi_efi_vars.{'qcow2' if qcow2 else 'fd'}",
        "version.txt",
    ]
    for name in names:
        if name != skip:
            (d / name).write_bytes(f"content of {name}\n".encode())
    (d / "unrelated.log").write_text("not an artefact\n")
    return d


def _sdist(root: Path) -> Path:
    p = root / "dist" / "piccolod-0.1.0.tar.gz"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"not really a tarball, collect does not care")
    return p


def _collect(tmp_path: Path, **kw: bool | str | None) -> tuple[Path, dict[str, object]]:
    images = _images(tmp_path, **kw)  # type: ignore[arg-type]
    staging = tmp_path / "staging"
    manifest = release.collect({"amd64-usr": images}, _sdist(tmp_path), INFO, staging, lambda _m: None)
    return staging, manifest


@pytest.fixture
def gnupghome(gpg_key: GpgKey, monkeypatch: pytest.MonkeyPatch) -> GpgKey:
    monkeypatch.setenv("GNUPGHOME", str(gpg_key.home))
    return gpg_key


@pytest.fixture
def other_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Path]]:
    homes: list[Path] = []

    def make() -> Path:
        homes.append(make_gnupghome())
        monkeypatch.setenv("GNUPGHOME", str(homes[-1]))
        return homes[-1]

    yield make
    for home in homes:
        kill_agent(home)


def test_collect_writes_artefacts_sums_and_a_sorted_manifest(tmp_path: Path) -> None:
    staging, manifest = _collect(tmp_path)
    assert release.listing(staging) == [
        "SHA256SUMS",
        "amd64-usr/flatcar_production_image.bin",
        "amd64-usr/flatcar_production_qemu_uefi_efi_code.fd",
        "amd64-usr/flatcar_production_qemu_uefi_efi_vars.fd",
        "amd64-usr/flatcar_production_qemu_uefi_image.img",
        "amd64-usr/flatcar_production_update.bin",
        "amd64-usr/flatcar_test_update-oem-qemu.gz",
        "amd64-usr/flatcar_test_update.gz",
        "amd64-usr/version.txt",
        "manifest.json",
        "piccolod-0.1.0.tar.gz",
    ]
    text = (staging / "manifest.json").read_text()
    assert json.loads(text) == manifest
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert manifest["payloads"] == [
        "amd64-usr/flatcar_production_update.bin",
        "amd64-usr/flatcar_test_update-oem-qemu.gz",
        "amd64-usr/flatcar_test_update.gz",
    ]
    assert manifest["flatcar_tag"] == "stable-4081.2.10"
    files = {f["path"]: f for f in manifest["files"]}  # type: ignore[attr-defined]
    img = files["amd64-usr/flatcar_production_image.bin"]
    assert img["size"] == len(b"content of flatcar_production_image.bin\n")
    assert len(img["sha256"]) == 64 and len(img["sha512"]) == 128
    # The real sha256sum agrees with our SHA256SUMS (and it covers the manifest too).
    r = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=staging,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "manifest.json: OK" in r.stdout


def test_collect_is_deterministic(tmp_path: Path) -> None:
    a, _ = _collect(tmp_path / "a")
    b, _ = _collect(tmp_path / "b")
    for name in ("SHA256SUMS", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_newer_sdk_qcow2_firmware_names_are_accepted(tmp_path: Path) -> None:
    staging, _ = _collect(tmp_path, qcow2=True)
    assert (staging / "amd64-usr" / "flatcar_production_qemu_uefi_efi_code.qcow2").is_file()


def _omaha_hash(path: Path, algorithm: str) -> str:
    """What an update server's Omaha response carries for a file, computed by openssl."""
    digest = subprocess.run(
        ["openssl", "dgst", f"-{algorithm}", "-binary", path], capture_output=True, check=True
    ).stdout
    return subprocess.run(["base64"], input=digest, capture_output=True, check=True).stdout.decode().strip()


def test_every_oem_payload_is_collected_signed_verified_and_described_for_the_update_server(
    tmp_path: Path, gnupghome: GpgKey
) -> None:
    images = _images(tmp_path)
    (images / "flatcar_test_update-oem-azure.gz").write_bytes(b"another OEM's payload\n")
    (images / "oem-qemu.raw").write_bytes(b"the sysext itself is not a payload\n")
    staging = tmp_path / "staging"
    manifest = release.collect({"amd64-usr": images}, _sdist(tmp_path), INFO, staging, lambda _m: None)
    oems = manifest["oem_payloads"]
    assert [(o["path"], o["oem"], o["offer_as"]) for o in oems] == [
        ("amd64-usr/flatcar_test_update-oem-azure.gz", "azure", "oem-azure.gz"),
        ("amd64-usr/flatcar_test_update-oem-qemu.gz", "qemu", "oem-qemu.gz"),
    ]
    for o in oems:
        path = staging / o["path"]
        assert o["size"] == path.stat().st_size
        assert o["omaha_sha1_base64"] == _omaha_hash(path, "sha1")
        assert o["omaha_sha256_base64"] == _omaha_hash(path, "sha256")
        assert o["path"] in manifest["payloads"]
    assert "amd64-usr/oem-qemu.raw" not in release.listing(staging)
    release.sign_release(staging, gnupghome.fingerprint, lambda _m: None)
    release.verify_release(staging, gnupghome.fingerprint, lambda _m: None)
    assert (staging / "amd64-usr" / "flatcar_test_update-oem-azure.gz.asc").is_file()
    # A release without the qemu_uefi image's OEM payload would fail every machine's update.
    (images / "flatcar_test_update-oem-qemu.gz").unlink()
    with pytest.raises(PiccoloError, match=r"flatcar_test_update-oem-qemu\.gz is missing \(the OEM payload"):
        release.collect({"amd64-usr": images}, _sdist(tmp_path / "x"), INFO, tmp_path / "s2", lambda _m: None)


def test_a_missing_required_artefact_is_named(tmp_path: Path) -> None:
    with pytest.raises(PiccoloError, match=r"flatcar_test_update\.gz is missing .*made by build_image"):
        _collect(tmp_path, skip="flatcar_test_update.gz")


def test_check_sums_catches_tampering_and_unlisted_files(tmp_path: Path) -> None:
    staging, _ = _collect(tmp_path)
    assert release.check_sums(staging) == 10
    (staging / "extra.txt").write_text("smuggled\n")
    with pytest.raises(PiccoloError, match=r"does not list extra\.txt"):
        release.check_sums(staging)
    (staging / "extra.txt").unlink()
    with (staging / "amd64-usr" / "flatcar_production_image.bin").open("ab") as f:
        f.write(b"!")
    with pytest.raises(PiccoloError, match=r"checksum mismatch for amd64-usr/flatcar_production_image\.bin"):
        release.check_sums(staging)


def test_sign_and_verify_with_real_gpg(tmp_path: Path, gnupghome: GpgKey) -> None:
    staging, _ = _collect(tmp_path)
    assert release.preflight_key(gnupghome.email) == gnupghome.fingerprint
    signed = release.sign_release(staging, gnupghome.fingerprint, lambda _m: None)
    assert signed == [
        "SHA256SUMS.asc",
        "amd64-usr/flatcar_production_update.bin.asc",
        "amd64-usr/flatcar_test_update-oem-qemu.gz.asc",
        "amd64-usr/flatcar_test_update.gz.asc",
    ]
    assert (staging / "SHA256SUMS.asc").read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    release.verify_release(staging, gnupghome.fingerprint, lambda _m: None)
    # gpg itself agrees.
    r = subprocess.run(
        ["gpg", "--batch", "--verify", "SHA256SUMS.asc", "SHA256SUMS"],
        check=False,
        cwd=staging,
        env=gnupghome.env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "Good signature" in r.stderr, r.stderr


def test_a_tampered_payload_fails_verification(tmp_path: Path, gnupghome: GpgKey) -> None:
    staging, _ = _collect(tmp_path)
    release.sign_release(staging, gnupghome.fingerprint, lambda _m: None)
    payload = staging / "amd64-usr" / "flatcar_test_update.gz"
    payload.write_bytes(b"evil")
    release.write_sums(staging)  # even with fresh checksums, the payload's own signature fails
    with pytest.raises(PiccoloError, match="signature"):
        release.verify_release(staging, gnupghome.fingerprint, lambda _m: None)


def test_a_signature_by_another_key_is_rejected(tmp_path: Path, gnupghome: GpgKey) -> None:
    staging, _ = _collect(tmp_path)
    release.sign_release(staging, gnupghome.fingerprint, lambda _m: None)
    with pytest.raises(PiccoloError, match="does not verify against key 0000"):
        release.verify_release(staging, "0" * 40, lambda _m: None)


def test_missing_key_fails_fast(other_home: Callable[[], Path]) -> None:
    home = other_home()
    started = time.monotonic()
    with pytest.raises(PiccoloError, match=rf"no secret key 'nobody@piccolo\.test' in the GnuPG home {home}"):
        release.preflight_key("nobody@piccolo.test")
    assert time.monotonic() - started < 10


def test_public_key_without_secret_is_refused(
    tmp_path: Path, gpg_key: GpgKey, other_home: Callable[[], Path]
) -> None:
    exported = subprocess.run(
        ["gpg", "--batch", "--armor", "--export", gpg_key.fingerprint],
        env=gpg_key.env(),
        capture_output=True,
        check=True,
    ).stdout
    home = other_home()
    subprocess.run(
        ["gpg", "--batch", "--import"],
        input=exported,
        env={"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    with pytest.raises(PiccoloError, match="no secret key"):
        release.preflight_key(gpg_key.fingerprint)


def test_a_key_that_needs_a_passphrase_fails_the_test_signature(other_home: Callable[[], Path]) -> None:
    home = other_home()
    fpr = generate_key(home, "locked@piccolo.test", passphrase="correct horse")
    with pytest.raises(PiccoloError, match=r"cannot sign with 'locked@piccolo\.test'") as exc:
        release.preflight_key("locked@piccolo.test")
    assert exc.value.hint is not None and "passphrase" in exc.value.hint
    assert "correct horse" not in str(exc.value)
    assert fpr


def test_an_ambiguous_key_name_is_refused(other_home: Callable[[], Path]) -> None:
    home = other_home()
    generate_key(home, "a@piccolo.test")
    generate_key(home, "b@piccolo.test")
    with pytest.raises(PiccoloError, match="matches 2 secret keys"):
        release.preflight_key("piccolo.test")


def _stage(tmp_path: Path, name: str = "staging") -> Path:
    """A fresh staging directory holding a collected release (a copy of one collected once)."""
    first = tmp_path / "collected"
    if not first.exists():
        staged, _ = _collect(tmp_path)
        staged.rename(first)
    shutil.copytree(first, tmp_path / name)
    return tmp_path / name


def test_publish_replaces_a_previous_release(tmp_path: Path) -> None:
    out = tmp_path / "release"
    release.publish(_stage(tmp_path), out)
    (out / "stale").write_text("from an older release\n")
    staging = _stage(tmp_path)
    release.publish(staging, out)
    assert not staging.exists()
    assert not (out / "stale").exists()
    assert release.check_sums(out) > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".release")) == []


def test_publish_into_an_empty_or_absent_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name in ("empty", "absent/deeper"):
        assert release.publish(_stage(tmp_path), tmp_path / name) == tmp_path / name
        assert release.is_release(tmp_path / name)


def test_publish_keeps_a_directory_of_older_releases(tmp_path: Path) -> None:
    releases = tmp_path / "srv" / "releases"
    release.publish(_stage(tmp_path), releases / "0.0.9")
    (releases / "notes.txt").write_text("kept\n")
    staging = _stage(tmp_path)
    before = snapshot(releases)
    with pytest.raises(PiccoloError, match="holds no piccolo release") as exc:
        release.publish(staging, releases)
    assert "\n" not in exc.value.message
    assert snapshot(releases) == before
    assert release.is_release(staging)  # the staged release is still there for a second try


def test_a_manifest_must_be_ours(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "some other tool"}\n')
    with pytest.raises(PiccoloError, match="holds no piccolo release"):
        release.publish(_stage(tmp_path), other)
    assert (other / "manifest.json").is_file()


@pytest.mark.parametrize(
    "which", ["/", ".", "cwd-parent", "work", "work-parent", "checkout", "in-staging", "piccolo"]
)
def test_output_dirs_that_are_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    work = tmp_path / "project" / "build"
    checkout = tmp_path / "elsewhere" / "scripts"
    ctx = BuildContext(work_dir=work, scripts_dir_override=checkout)
    for d in (work, checkout):
        d.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    output = {
        "/": Path("/"),
        ".": Path(),
        "cwd-parent": Path(".."),
        "work": Path("build"),
        "work-parent": tmp_path,
        "checkout": checkout,
        "in-staging": work / "release-staging" / "out",
        "piccolo": Path(release.__file__).resolve().parent.parent,
    }[which]
    with pytest.raises(PiccoloError, match=r"^release\.output_dir: ") as exc:
        release.check_output_dir(output, release.protected_dirs(ctx))
    assert "\n" not in exc.value.message
    assert exc.value.hint
    assert release.check_output_dir(Path("release"), release.protected_dirs(ctx)) == (
        tmp_path / "project" / "release"
    )
    assert release.check_output_dir(work / "release", release.protected_dirs(ctx)) == work / "release"


def test_publish_protects_the_work_directory_and_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = _stage(tmp_path)
    monkeypatch.chdir(tmp_path)
    for output in (tmp_path, Path(), Path("/")):
        with pytest.raises(PiccoloError, match="or a parent of it"):
            release.publish(staging, output)
    assert release.is_release(staging)


def test_publish_follows_a_symlinked_output(tmp_path: Path) -> None:
    target = tmp_path / "real"
    release.publish(_stage(tmp_path), target)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    release.publish(_stage(tmp_path), link)
    assert link.is_symlink() and link.resolve() == target
    assert release.is_release(target)


def test_there_is_always_a_release_while_publishing(tmp_path: Path) -> None:
    """A separate process watches manifest.json while releases are published over one another."""
    out = tmp_path / "release"
    release.publish(_stage(tmp_path), out)
    stagings = [_stage(tmp_path, f"s{i}") for i in range(150)]
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "path, stop, misses = sys.argv[1], sys.argv[2], 0\n"
            "print('ready', flush=True)\n"
            "while not os.path.exists(stop):\n"
            "    misses += not os.path.exists(path)\n"
            "print(misses, flush=True)\n",
            str(out / release.MANIFEST),
            str(tmp_path / "stop"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "ready\n"
        for staging in stagings:
            release.publish(staging, out)
        (tmp_path / "stop").touch()
        assert watcher.stdout.readline() == "0\n"
    finally:
        watcher.kill()
        watcher.wait()
