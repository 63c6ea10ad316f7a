"""Artefacts and the signed release: collect, checksum, describe, sign with gpg, verify, publish.

Layout of ``release.output_dir`` (built in the work directory's staging area and moved into place
only once every checksum and signature has been verified, so the output never holds a half release)::

    SHA256SUMS            "<sha256>  <path>" for every other file, sorted by path
    SHA256SUMS.asc        gpg --detach-sign --armor (only with release.signing_key)
    manifest.json         versions, digests and sizes (sorted keys)
    <sdist>               the agent's source distribution
    <board>/<artefact>    the files of ARTEFACTS below, per board
    <board>/flatcar_test_update-oem-<id>.gz
                          every OEM payload the build made (at least the qemu_uefi image's)
    <board>/<payload>.asc a detached signature of each update payload, OEM payloads included

Signing uses ``gpg --batch --armor --detach-sign --local-user KEY``; GNUPGHOME is honoured (it is passed
through by :mod:`piccolo_build.run`). No passphrase is ever handled here: the key must be usable
without a prompt (an unprotected key in a throwaway GNUPGHOME in CI, or a running gpg-agent).

Publishing swaps the verified staging directory with ``release.output_dir`` in one step
(:mod:`piccolo_build.atomic`), so there is never a moment without a release. The output is replaced
whole, so it must be absent, empty or a previous release (its ``manifest.json`` says so); the current
directory, the work directory, the flatcar/scripts checkout and their parents are refused, already in
the ``preflight`` step (:func:`check_output_dir`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piccolo_build.atomic import replace_dir
from piccolo_build.errors import PiccoloError
from piccolo_build.run import run

if TYPE_CHECKING:
    from piccolo_build.context import BuildContext

SUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
STAGING = "the staging directory"
_CHUNK = 1 << 20
GPG_TIMEOUT = 300.0  # seconds; a key that wants a passphrase prompt must fail, not hang the build


@dataclass(frozen=True)
class Artefact:
    """A file the SDK leaves in ``__build__/images/images/<board>/latest``. ``names`` are alternatives
    (the first that exists is taken): newer flatcar/scripts write the qemu_uefi firmware as qcow2, and
    disk images may also be there compressed (``compress_disk_images`` keeps the original)."""

    names: tuple[str, ...]
    made_by: str
    description: str
    required: bool = True
    payload: bool = False


# The one table of artefact names (docs/flatcar.md; flatcar/scripts build_library).
ARTEFACTS: tuple[Artefact, ...] = (
    Artefact(
        ("flatcar_production_image.bin", "flatcar_production_image.bin.bz2"),
        "build_image",
        "the production disk image",
    ),
    Artefact(
        ("flatcar_production_update.bin", "flatcar_production_update.bin.bz2"),
        "build_image",
        "the raw USR partition, input for update payload generation",
        payload=True,
    ),
    Artefact(
        ("flatcar_test_update.gz",),
        "build_image",
        "the update payload update_engine consumes (signed with the SDK's development key)",
        payload=True,
    ),
    Artefact(("flatcar_production_image.vmlinuz",), "build_image", "the kernel", required=False),
    Artefact(("flatcar_production_image_packages.txt",), "build_image", "package list", required=False),
    Artefact(("flatcar_production_image_contents.txt",), "build_image", "file list", required=False),
    Artefact(("version.txt",), "build_image", "OS and SDK versions of the image", required=False),
    Artefact(
        ("flatcar_production_qemu_uefi_image.img", "flatcar_production_qemu_uefi_image.img.bz2"),
        "image_to_vm.sh",
        "qemu_uefi disk image",
    ),
    Artefact(
        ("flatcar_production_qemu_uefi_efi_code.fd", "flatcar_production_qemu_uefi_efi_code.qcow2"),
        "image_to_vm.sh",
        "UEFI firmware code for qemu",
    ),
    Artefact(
        ("flatcar_production_qemu_uefi_efi_vars.fd", "flatcar_production_qemu_uefi_efi_vars.qcow2"),
        "image_to_vm.sh",
        "UEFI variables for qemu",
    ),
    Artefact(("flatcar_production_qemu_uefi.sh",), "image_to_vm.sh", "qemu launch script", required=False),
    Artefact(("flatcar_production_qemu_uefi.README",), "image_to_vm.sh", "how to boot it", required=False),
)


# OEM payloads: the update payload of an OEM sysext, one per OEM the build made, beside the image
# (build_image oem_sysext from beta-4757 on, image_to_vm.sh before; both run delta_generator on
# oem-<id>.raw). flatcar-postinst (flatcar/update_engine) needs the new version's payload of the
# machine's OEM: it takes the package named oem-<id>.gz from the update server's Omaha response, and
# without one falls back to Flatcar's own servers, which have nothing for a Piccolo OS version, and
# the update fails. docs/release.md says how an update server offers them.
OEM_PAYLOAD_PREFIX = "flatcar_test_update-"
OEM_PAYLOAD_GLOB = f"{OEM_PAYLOAD_PREFIX}oem-*.gz"
# The qemu_uefi image is an OEM image (oem-qemu): its payload must be there.
REQUIRED_OEM_PAYLOADS = (f"{OEM_PAYLOAD_PREFIX}oem-qemu.gz",)


def oem_payloads(images: Path) -> list[Path]:
    """The OEM payloads in a board's image directory; one line naming a missing required one."""
    found = sorted(p for p in images.glob(OEM_PAYLOAD_GLOB) if p.is_file())
    missing = [n for n in REQUIRED_OEM_PAYLOADS if not (images / n).is_file()]
    if missing:
        raise PiccoloError(
            f"{images}: {', '.join(missing)} is missing (the OEM payload of the qemu_uefi image, made by "
            "build_image oem_sysext or image_to_vm.sh); a machine updating to this release needs it"
        )
    return found


def oem_entry(rel: str, path: Path) -> dict[str, Any]:
    """What an update server needs to offer an OEM payload: the name flatcar-postinst asks for
    (``oem-<id>.gz``), its size, and the Omaha digests (SHA-1 and SHA-256, base64)."""
    oem = path.name.removeprefix(OEM_PAYLOAD_PREFIX).removesuffix(".gz")
    h1, h256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h1.update(chunk)
            h256.update(chunk)
    return {
        "path": rel,
        "oem": oem.removeprefix("oem-"),
        "offer_as": f"{oem}.gz",
        "size": path.stat().st_size,
        "omaha_sha1_base64": base64.b64encode(h1.digest()).decode(),
        "omaha_sha256_base64": base64.b64encode(h256.digest()).decode(),
    }


@dataclass(frozen=True)
class ReleaseInfo:
    """What the manifest says besides the files."""

    piccolo_version: str
    flatcar_tag: str
    flatcar_commit: str
    sdk_version: str | None
    update_group: str
    boards: tuple[str, ...]
    config_sha256: str


def digests(path: Path) -> dict[str, Any]:
    """Size, SHA-256 and SHA-512 of a file, read once."""
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h256.update(chunk)
            h512.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h256.hexdigest(), "sha512": h512.hexdigest()}


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (images are gigabytes), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def collect(
    images: dict[str, Path], sdist: Path, info: ReleaseInfo, staging: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fill ``staging`` (emptied first) with the artefacts, SHA256SUMS and manifest.json."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    files: list[dict[str, Any]] = []
    oems: list[dict[str, Any]] = []
    for board, src_dir in sorted(images.items()):
        for art in ARTEFACTS:
            found = next((src_dir / n for n in art.names if (src_dir / n).is_file()), None)
            if found is None:
                if art.required:
                    raise PiccoloError(
                        f"{src_dir}: {' or '.join(art.names)} is missing"
                        f" ({art.description}, made by {art.made_by})"
                    )
                continue
            rel = f"{board}/{found.name}"
            _place(found, staging / rel)
            log(f"collected {rel}")
            kind = "payload" if art.payload else art.made_by
            files.append({"path": rel, "board": board, "kind": kind, **digests(staging / rel)})
        for found in oem_payloads(src_dir):
            rel = f"{board}/{found.name}"
            _place(found, staging / rel)
            log(f"collected {rel} (OEM payload)")
            files.append({"path": rel, "board": board, "kind": "payload", **digests(staging / rel)})
            oems.append({"board": board, **oem_entry(rel, staging / rel)})
    if not sdist.is_file():
        raise PiccoloError(f"{sdist}: the agent's source distribution is missing")
    _place(sdist, staging / sdist.name)
    sdist_entry = {"path": sdist.name, **digests(staging / sdist.name)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "piccolo_version": info.piccolo_version,
        "flatcar_tag": info.flatcar_tag,
        "flatcar_commit": info.flatcar_commit,
        "sdk_version": info.sdk_version,
        "update_group": info.update_group,
        "boards": list(info.boards),
        "config_sha256": info.config_sha256,
        "agent_sdist": sdist_entry,
        "files": sorted(files, key=lambda f: f["path"]),
        "payloads": sorted(f["path"] for f in files if f["kind"] == "payload"),
        "oem_payloads": sorted(oems, key=lambda o: o["path"]),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_sums(staging)
    log(f"wrote {SUMS} and {MANIFEST}")
    return manifest


def _release_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != SUMS and not p.name.endswith(".asc")
    )


def write_sums(root: Path) -> None:
    lines = [f"{digests(root / rel)['sha256']}  {rel}\n" for rel in _release_files(root)]
    (root / SUMS).write_text("".join(lines), encoding="utf-8")


def check_sums(root: Path) -> int:
    """Recompute every checksum in SHA256SUMS; every file of the release must be listed."""
    listed: dict[str, str] = {}
    for n, line in enumerate((root / SUMS).read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise PiccoloError(f"{root / SUMS}:{n}: malformed line")
        listed[rel] = digest
    unlisted = sorted(set(_release_files(root)) - set(listed))
    if unlisted:
        raise PiccoloError(f"{root / SUMS}: does not list {', '.join(unlisted)}")
    for rel, digest in listed.items():
        if not (root / rel).is_file() or digests(root / rel)["sha256"] != digest:
            raise PiccoloError(f"{root / SUMS}: checksum mismatch for {rel}")
    return len(listed)


# --- gpg ---------------------------------------------------------------------------------------


def key_fingerprint(key: str, *, secret: bool = True) -> str:
    """The fingerprint of the one secret (or, with ``secret=False``, public) key ``key`` names; a clear
    error when there is none."""
    listing = "--list-secret-keys" if secret else "--list-keys"
    r = run(["gpg", "--batch", "--with-colons", listing, "--", key], check=False, timeout=GPG_TIMEOUT)
    fprs: list[str] = []
    after_sec = False
    for line in r.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == ("sec" if secret else "pub"):
            after_sec = True
        elif fields[0] == "fpr" and after_sec:
            fprs.append(fields[9])
            after_sec = False
    kind = "secret" if secret else "public"
    if r.returncode != 0 or not fprs:
        home = os.environ.get("GNUPGHOME", "~/.gnupg")
        raise PiccoloError(
            f"release.signing_key: no {kind} key {key!r} in the GnuPG home {home}",
            hint="import the key (gpg --import) or set GNUPGHOME to the keyring that holds it",
        )
    if len(fprs) > 1:
        raise PiccoloError(
            f"release.signing_key: {key!r} matches {len(fprs)} {kind} keys",
            hint="name the key by its full fingerprint",
        )
    return fprs[0]


def sign(path: Path, key: str) -> Path:
    out = path.with_name(path.name + ".asc")
    argv: list[str | os.PathLike[str]] = ["gpg", "--batch", "--yes", "--armor", "--detach-sign"]
    argv += ["--local-user", key, "--output", out, path]
    run(argv, timeout=GPG_TIMEOUT)
    return out


def verify(signature: Path, data: Path, fingerprint: str) -> None:
    """``gpg --verify``; the signature must be good and made by ``fingerprint`` (primary or subkey)."""
    r = run(
        ["gpg", "--batch", "--status-fd", "1", "--verify", signature, data], check=False, timeout=GPG_TIMEOUT
    )
    valid = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("[GNUPG:] VALIDSIG ")]
    signers = {f for parts in valid for f in (parts[2], parts[-1])}
    if r.returncode != 0 or fingerprint not in signers:
        raise PiccoloError(f"{signature}: the signature does not verify against key {fingerprint}")


def preflight_key(key: str) -> str:
    """Before any long step: the key exists and can sign without a prompt. Returns its fingerprint."""
    fpr = key_fingerprint(key)
    with tempfile.TemporaryDirectory(prefix="piccolo-keycheck-") as tmp:
        probe = Path(tmp) / "probe"
        probe.write_text("piccolo-build signing key check\n", encoding="utf-8")
        try:
            sig = sign(probe, fpr)
        except PiccoloError as exc:
            raise PiccoloError(
                f"release.signing_key: cannot sign with {key!r}: {exc.message}",
                hint="the key must sign without a passphrase prompt (gpg-agent, or an unprotected CI key)",
            ) from None
        verify(sig, probe, fpr)
    return fpr


def sign_release(root: Path, key: str, log: Callable[[str], None]) -> list[str]:
    """Sign SHA256SUMS and every update payload listed in the manifest."""
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    signed = []
    for rel in [SUMS, *manifest["payloads"]]:
        sign(root / rel, key)
        log(f"signed {rel} -> {rel}.asc")
        signed.append(f"{rel}.asc")
    return signed


def verify_release(root: Path, fingerprint: str | None, log: Callable[[str], None]) -> None:
    """Every checksum, and (when signed) every expected signature, made by ``fingerprint``."""
    n = check_sums(root)
    log(f"{n} checksums in {SUMS} match")
    if fingerprint is None:
        return
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    for rel in [SUMS, *manifest["payloads"]]:
        sig = root / f"{rel}.asc"
        if not sig.is_file():
            raise PiccoloError(f"{sig}: signature missing")
        verify(sig, root / rel, fingerprint)
        log(f"good signature on {rel} by {fingerprint}")


def is_release(root: Path) -> bool:
    """Whether ``root`` holds a release this module wrote: a manifest.json with our format key."""
    manifest = root / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and type(data.get("format")) is int
        and {"piccolo_version", "files"} <= data.keys()
    )


def check_output_dir(output: Path, protected: Mapping[str, Path]) -> Path:
    """``output`` resolved, when a release may replace it; else a one-line :class:`PiccoloError`.

    Refused: the current directory, any directory of ``protected`` (name -> path) and any parent of
    them, anything inside the staging directory, something that is not a directory, and a non-empty
    directory that does not hold a previous release (an older release in a subdirectory is kept).
    """
    key = "release.output_dir"
    out = output.resolve()
    hint = "set release.output_dir to a directory of its own, e.g. release or /srv/releases/<version>"
    for what, path in {"the current directory": Path.cwd(), **protected}.items():
        guarded = path.resolve()
        if out == guarded or out in guarded.parents:
            raise PiccoloError(f"{key}: {output} is {what} or a parent of it ({guarded})", hint=hint)
    staging = protected.get(STAGING)
    if staging is not None and staging.resolve() in out.parents:
        raise PiccoloError(f"{key}: {output} is inside the staging directory {staging}", hint=hint)
    if out.exists() and not out.is_dir():
        raise PiccoloError(f"{key}: {output} exists and is not a directory", hint=hint)
    if out.is_dir() and next(out.iterdir(), None) is not None and not is_release(out):
        raise PiccoloError(
            f"{key}: {output} is not empty and holds no piccolo release ({MANIFEST}): refusing to replace it",
            hint=hint,
        )
    return out


def protected_dirs(ctx: BuildContext) -> dict[str, Path]:
    """The directories of a build that publishing must never replace (nor any parent of them)."""
    dirs = {
        "the work directory": ctx.work_dir,
        "the flatcar/scripts checkout": ctx.scripts_dir,
        STAGING: ctx.staging_dir,
        "the piccolo-build checkout": Path(__file__).resolve().parent.parent,
    }
    if ctx.config_file is not None:
        dirs["the configuration's directory"] = ctx.config_file.parent
    return dirs


def publish(staging: Path, output: Path, protected: Mapping[str, Path] | None = None) -> Path:
    """Replace ``output`` by ``staging`` in one step (copy first when they are on different devices).

    ``output`` is checked again with :func:`check_output_dir` (``staging`` and the work directory that
    holds it are always protected); a symlink is followed. Returns the directory published into.
    """
    guard = {STAGING: staging, "the work directory": staging.parent, **(protected or {})}
    out = check_output_dir(output, guard)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = staging
    if staging.stat().st_dev != out.parent.stat().st_dev:
        src = Path(tempfile.mkdtemp(prefix=f".{out.name}.new.", dir=out.parent))
        try:
            shutil.copytree(staging, src, dirs_exist_ok=True)
        except BaseException:
            shutil.rmtree(src)
            raise
    try:
        replace_dir(src, out)
    except BaseException:
        if src is not staging and src.exists():
            shutil.rmtree(src)  # the copy; the staged release stays for a second try
        raise
    if src is not staging:
        shutil.rmtree(staging)
    return out


def listing(root: Path) -> Iterable[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
