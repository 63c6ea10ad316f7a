"""``piccolo_build.release``: artefacts, SHA256SUMS, the manifest, and real gpg signing and verification."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from piccolo_build import release
from piccolo_build.errors import PiccoloError
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


def test_a_missing_required_artefact_is_named(tmp_path: Path) -> None:
    with pytest.raises(PiccoloError, match=r"flatcar_test_update\.gz is missing .*made by build_image"):
        _collect(tmp_path, skip="flatcar_test_update.gz")


def test_check_sums_catches_tampering_and_unlisted_files(tmp_path: Path) -> None:
    staging, _ = _collect(tmp_path)
    assert release.check_sums(staging) == 9
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


def test_publish_replaces_the_output_atomically(tmp_path: Path) -> None:
    staging, _ = _collect(tmp_path)
    out = tmp_path / "release"
    out.mkdir()
    (out / "stale").write_text("from an older release\n")
    release.publish(staging, out)
    assert not staging.exists()
    assert not (out / "stale").exists()
    assert (out / "SHA256SUMS").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".release")) == []
