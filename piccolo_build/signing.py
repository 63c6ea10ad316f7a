"""A release's update payloads signed for ``release.update_key``, and checked against it.

The SDK signs the payloads it makes (``flatcar_test_update.gz``, and ``flatcar_test_update-<sysext>.gz``
for sysexts) with Flatcar's development key (:mod:`piccolo_build.aukey`). Here, in the release step and
outside the image build, every one of them is signed again with the private key the pipeline supplies
(a PEM file named by ``--update-signing-key`` or ``$PICCOLO_UPDATE_SIGNING_KEY``, with an optional
passphrase in ``$PICCOLO_UPDATE_SIGNING_KEY_PASSPHRASE``), and the manifest and ``SHA256SUMS`` are
brought up to date. The key file is read, never copied: it must live outside the work directory, the
checkout and the release (:func:`check_key_location`), and only its public id (``SHA256:<hex>``) is
ever logged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piccolo_build import payload
from piccolo_build.atomic import atomic_write
from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

KEY_VARIABLE = "PICCOLO_UPDATE_SIGNING_KEY"
PASSPHRASE_VARIABLE = "PICCOLO_UPDATE_SIGNING_KEY_PASSPHRASE"  # noqa: S105 - a variable name
# The payloads update_engine and flatcar-postinst's download_sysext check with update-payload-key.pub.pem.
UPDATE_PAYLOAD = re.compile(r"flatcar_test_update(?:-[A-Za-z0-9_.-]+)?\.gz")
DEVELOPMENT_KEY_WARNING = (
    "release.update_key is not set: the images trust Flatcar's development key, whose private half is "
    "public; they must not go to production"
)


def signing_key_path(option: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The update signing key file: the option, else ``$PICCOLO_UPDATE_SIGNING_KEY``, else None."""
    if option is not None:
        return option
    value = (os.environ if environ is None else environ).get(KEY_VARIABLE)
    if value is not None and not value.strip():
        raise PiccoloError(f"${KEY_VARIABLE} is empty", hint="unset it, or name the private key file")
    return Path(value) if value else None


def check_key_location(path: Path, protected: Mapping[str, Path]) -> None:
    """The private key must not sit inside a directory a build writes or publishes."""
    resolved = path.resolve()
    for what, directory in protected.items():
        if directory.resolve() == resolved or directory.resolve() in resolved.parents:
            raise PiccoloError(
                f"the update signing key {path} is inside {what} ({directory})",
                hint="keep the private key outside the build tree and the release (e.g. a CI secret file)",
            )


def load_signing_key(path: Path, update_key_pem: bytes | None) -> RSAPrivateKey:
    """The private key at ``path``, which must be the half of ``release.update_key``."""
    if update_key_pem is None:
        raise PiccoloError(
            "an update signing key was given but release.update_key is not set",
            hint="set release.update_key to the matching public key (openssl pkey -in KEY -pubout)",
        )
    passphrase = os.environ.get(PASSPHRASE_VARIABLE)
    key = payload.load_private_key(path, passphrase.encode() if passphrase else None)
    public = payload.public_pem(key.public_key())
    if public != update_key_pem:
        raise PiccoloError(
            f"{path}: the update signing key ({payload.key_id(key.public_key())}) is not the private half "
            f"of release.update_key ({payload.key_id(payload.parse_public_key(update_key_pem))})",
            hint="give the private key whose public half release.update_key names (openssl pkey -pubout)",
        )
    return key


def update_payloads(root: Path) -> list[str]:
    """The release's update payloads (paths relative to ``root``), from its manifest."""
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    return sorted(rel for rel in manifest["payloads"] if UPDATE_PAYLOAD.fullmatch(Path(rel).name))


def sign_payloads(root: Path, key: RSAPrivateKey, log: Callable[[str], None]) -> list[str]:
    """Sign every update payload under ``root`` with ``key`` (each replaced whole), then update the
    manifest's digests and ``SHA256SUMS``."""
    from piccolo_build import release

    signed = update_payloads(root)
    if not signed:
        raise PiccoloError(
            f"{root}: the release has no update payload to sign", hint="is this a release `build` published?"
        )
    for rel in signed:
        key_id = payload.sign_payload(root / rel, root / rel, key)
        log(f"signed {rel} for {key_id}")
    manifest_path = root / release.MANIFEST
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    for entry in manifest["files"]:
        if entry["path"] in signed:
            entry.update(release.digests(root / entry["path"]))
    manifest["update_key"] = payload.key_id(key.public_key())
    atomic_write(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    release.write_sums(root)
    return signed


def verify_payloads(root: Path, key: RSAPublicKey, log: Callable[[str], None]) -> None:
    """Every update payload under ``root`` must verify against ``key`` as update_engine checks it."""
    found = update_payloads(root)
    if not found:
        raise PiccoloError(
            f"{root}: the release has no update payload", hint="is this a release `build` published?"
        )
    for rel in found:
        payload.verify_payload(root / rel, key)
        log(f"good update signature on {rel} by {payload.key_id(key)}")


# --- a published release, signed and verified after the build (``piccolo-build release``) -----------

_SMALL = 1 << 20  # files below this are copied into the working copy, larger ones hard-linked


def _working_copy(root: Path) -> Path:
    """A sibling copy of ``root`` to sign in: large files hard-linked (signing replaces a payload
    whole, never writes into it), small ones (manifest, sums, signatures) copied."""
    import shutil
    import tempfile

    copy = Path(tempfile.mkdtemp(prefix=f".{root.name}.signing.", dir=root.parent))
    for src in sorted(root.rglob("*")):
        dst = copy / src.relative_to(root)
        if src.is_dir():
            dst.mkdir(exist_ok=True)
        elif src.stat().st_size < _SMALL:
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)
    return copy


def sign_release(
    root: Path,
    *,
    update_key_pem: bytes | None,
    key_path: Path | None,
    gpg_key: str | None,
    log: Callable[[str], None],
) -> None:
    """Sign the release in ``root`` after the build: its update payloads for ``release.update_key``,
    then (with ``release.signing_key``) SHA256SUMS and the payloads with gpg; verify everything; swap
    the result into place in one step (a failure leaves ``root`` as it was)."""
    import shutil

    from piccolo_build import release

    if not release.is_release(root):
        raise PiccoloError(
            f"{root}: no piccolo release here ({release.MANIFEST} missing or not ours)",
            hint="give the directory `piccolo-build build` published (default: release.output_dir)",
        )
    key = None
    if update_key_pem is not None:
        if key_path is None:
            raise PiccoloError(
                "release.update_key is set but no update signing key was given",
                hint=f"--update-signing-key FILE or ${KEY_VARIABLE}",
            )
        check_key_location(key_path, {"the release": root})
        key = load_signing_key(key_path, update_key_pem)
    elif key_path is not None:
        load_signing_key(key_path, None)  # explains that release.update_key is missing
    if key is None and gpg_key is None:
        raise PiccoloError(
            "nothing to sign: release.update_key and release.signing_key are both unset",
            hint="set release.update_key (payloads) and/or release.signing_key (gpg)",
        )
    fpr = release.key_fingerprint(gpg_key) if gpg_key else None
    copy = _working_copy(root)
    try:
        if key is not None:
            sign_payloads(copy, key, log)
        for stale in copy.rglob("*.asc"):
            stale.unlink()  # made for the bytes before; SHA256SUMS may have changed
        if fpr is not None:
            release.sign_release(copy, fpr, log)
        verify_release(copy, update_key_pem=update_key_pem, gpg_fingerprint=fpr, log=log)
        release.publish(copy, root)
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise


def verify_release(
    root: Path, *, update_key_pem: bytes | None, gpg_fingerprint: str | None, log: Callable[[str], None]
) -> None:
    """Checksums, gpg signatures (with a fingerprint) and update payload signatures (with an update
    key) of the release in ``root``; a one-line error for the first that does not hold."""
    from piccolo_build import release

    if not release.is_release(root):
        raise PiccoloError(
            f"{root}: no piccolo release here ({release.MANIFEST} missing or not ours)",
            hint="give the directory `piccolo-build build` published (default: release.output_dir)",
        )
    release.verify_release(root, gpg_fingerprint, log)
    if update_key_pem is not None:
        verify_payloads(root, payload.parse_public_key(update_key_pem), log)
