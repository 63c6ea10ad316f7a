"""Update payloads as update_engine reads them: parse, verify and (re-)sign, without loading them whole.

The format (flatcar/update_engine ``src/update_engine/update_metadata.proto``, ``delta_metadata.cc``,
``payload_signer.cc``, ``payload_processor.cc``)::

    "CrAU"                       magic
    uint64 big-endian            file format version (1)
    uint64 big-endian            size of the manifest
    DeltaArchiveManifest         protobuf
    blobs                        data of the install operations
    Signatures                   protobuf, at signatures_offset (counted from the end of the manifest)

The manifest fields this module touches: ``noop_operations`` (2, InstallOperation), ``block_size`` (3,
default 4096), ``signatures_offset`` (4) and ``signatures_size`` (5). A signed payload also carries a
"dummy" REPLACE operation in ``noop_operations`` that covers the signature blob (data_offset =
signatures_offset, data_length = signatures_size, one extent at the sparse-hole block UINT64_MAX of
ceil(size / block_size) blocks), which older clients need; delta_generator adds it, and so do we.

update_engine hashes every byte before the signature blob (header, manifest, blobs) with SHA-256, takes
from ``Signatures`` the first ``Signature`` whose ``version`` is 2 (``kSignatureMessageCurrentVersion``)
and checks its ``data`` with ``EVP_PKEY_verify_recover``, RSA PKCS#1 v1.5 padding, digest SHA-256,
against ``/usr/share/update_engine/update-payload-key.pub.pem`` (``PEM_read_PUBKEY``). That is an
ordinary RSASSA-PKCS1-v1_5 signature over the SHA-256 digest, which is what :func:`sign_payload` makes
and :func:`verify_payload` checks. A client without that key file skips the check, so the image must
carry one.

The cryptography library does the RSA part: it is already in the pinned environment (tpm2-pytss needs
it), it parses and validates keys in-process with clear errors, and the private key never appears on
a command line or in a temporary file, as it would with the ``openssl`` CLI.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

MAGIC = b"CrAU"
FORMAT_VERSION = 1
HEADER = struct.Struct(">4sQQ")  # magic, format version, manifest size
SIGNATURE_VERSION = 2  # kSignatureMessageCurrentVersion: the one signature a client checks
SPARSE_HOLE = (1 << 64) - 1  # kSparseHole: an extent that writes nowhere
DEFAULT_BLOCK_SIZE = 4096
MAX_MANIFEST = 64 << 20  # a full payload's manifest is kilobytes; anything this big is not one
MAX_SIGNATURES = 1 << 20
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
_CHUNK = 1 << 20

# Manifest and message field numbers (update_metadata.proto).
_NOOP_OPERATIONS = 2
_BLOCK_SIZE = 3
_SIGNATURES_OFFSET = 4
_SIGNATURES_SIZE = 5
_OP_TYPE, _OP_DATA_OFFSET, _OP_DATA_LENGTH, _OP_DST_EXTENTS = 1, 2, 3, 6
_EXTENT_START, _EXTENT_BLOCKS = 1, 2
_SIGS_SIGNATURE, _SIG_VERSION, _SIG_DATA = 1, 1, 2
_REPLACE = 0
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class PayloadError(PiccoloError):
    """A payload that cannot be read, or whose signature does not verify (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(
            message,
            hint=hint
            or "update payloads are what build_image makes (flatcar_test_update*.gz); "
            "docs/release.md, 'The update key'",
        )


# --- a minimal protobuf wire-format reader and writer ------------------------------------------------


@dataclass(frozen=True)
class Field:
    number: int
    wire: int
    value: int | bytes  # an integer for varint/fixed fields, the bytes of a length-delimited one
    raw: bytes  # the whole field as it was encoded (key included)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> Iterator[Field]:
    """The fields of one encoded protobuf message, in order; ``ValueError`` for malformed input."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if number == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if pos + width > len(data):
                raise ValueError("truncated fixed-width field")
            value = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("length-delimited field runs past the end")
            value = data[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield Field(number, wire, value, data[start:pos])


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return _encode_varint(number << 3 | _VARINT) + _encode_varint(value)


def bytes_field(number: int, value: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(value)) + value


def _int(f: Field) -> int:
    if not isinstance(f.value, int):
        raise TypeError(f"field {f.number} is not an integer")
    return f.value


def _bytes(f: Field) -> bytes:
    if not isinstance(f.value, bytes):
        raise TypeError(f"field {f.number} is not length-delimited")
    return f.value


# --- the payload ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    version: int | None
    data: bytes


@dataclass(frozen=True)
class Payload:
    """What a payload's header and manifest say; ``manifest`` is the encoded protobuf."""

    size: int  # of the whole file
    manifest: bytes
    block_size: int
    signatures_offset: int | None
    signatures_size: int | None

    @property
    def metadata_size(self) -> int:
        """Header plus manifest: where the blobs, and ``signatures_offset``, start."""
        return HEADER.size + len(self.manifest)

    @property
    def signed(self) -> bool:
        return self.signatures_offset is not None and self.signatures_size is not None

    @property
    def signed_size(self) -> int:
        """How many leading bytes the signature covers (all of a payload without one)."""
        if self.signatures_offset is None:
            return self.size
        return self.metadata_size + self.signatures_offset


def _read_head(path: Path) -> tuple[int, bytes]:
    """The file's size and its manifest, after checking the header."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                raise PayloadError(f"{path}: too short for an update payload ({size} bytes)")
            magic, version, manifest_size = HEADER.unpack(head)
            if magic != MAGIC:
                raise PayloadError(f"{path}: not an update payload (no {MAGIC.decode()} magic)")
            if version != FORMAT_VERSION:
                raise PayloadError(f"{path}: payload format version {version}, expected {FORMAT_VERSION}")
            if manifest_size > min(MAX_MANIFEST, size - HEADER.size):
                raise PayloadError(f"{path}: manifest size {manifest_size} exceeds the file")
            return size, f.read(manifest_size)
    except OSError as exc:
        raise PayloadError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_payload(path: Path) -> Payload:
    """Header and manifest of the payload at ``path``; a one-line :class:`PayloadError` otherwise."""
    size, manifest = _read_head(path)
    try:
        block_size, offset, sig_size = DEFAULT_BLOCK_SIZE, None, None
        for field in fields(manifest):
            if field.number == _BLOCK_SIZE:
                block_size = _int(field)
            elif field.number == _SIGNATURES_OFFSET:
                offset = _int(field)
            elif field.number == _SIGNATURES_SIZE:
                sig_size = _int(field)
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"{path}: malformed manifest: {exc}") from None
    payload = Payload(size, manifest, block_size, offset, sig_size)
    if (offset is None) != (sig_size is None):
        raise PayloadError(f"{path}: the manifest has only one of signatures_offset and signatures_size")
    if offset is not None and payload.signed_size + (sig_size or 0) != size:
        # update_engine's own verifier insists the signature blob ends the file (payload_signer.cc).
        raise PayloadError(f"{path}: the signature blob is not at the end of the payload")
    if block_size == 0:
        raise PayloadError(f"{path}: block_size 0")
    return payload


def read_signatures(path: Path, payload: Payload) -> tuple[Signature, ...]:
    """The ``Signatures`` message at the end of a signed payload."""
    if not payload.signed or payload.signatures_size is None:
        raise PayloadError(f"{path}: the payload is not signed (no signatures_offset in its manifest)")
    if payload.signatures_size > MAX_SIGNATURES:
        raise PayloadError(f"{path}: a signature blob of {payload.signatures_size} bytes")
    with path.open("rb") as f:
        f.seek(payload.signed_size)
        blob = f.read(payload.signatures_size)
    out = []
    try:
        for field in fields(blob):
            if field.number != _SIGS_SIGNATURE:
                continue
            version, data = None, b""
            for inner in fields(_bytes(field)):
                if inner.number == _SIG_VERSION:
                    version = _int(inner)
                elif inner.number == _SIG_DATA:
                    data = _bytes(inner)
            out.append(Signature(version, data))
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"{path}: malformed signature blob: {exc}") from None
    return tuple(out)


def _copy(src: BinaryIO, dst: BinaryIO | None, length: int, digest: hashlib._Hash) -> None:
    while length > 0:
        chunk = src.read(min(_CHUNK, length))
        if not chunk:
            raise PayloadError(f"{src.name}: ended early")
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
        length -= len(chunk)


def signed_digest(path: Path, payload: Payload) -> bytes:
    """SHA-256 of the bytes the signature covers: everything before the signature blob."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        _copy(f, None, payload.signed_size, h)
    return h.digest()


# --- keys ---------------------------------------------------------------------------------------------


def key_id(key: RSAPublicKey) -> str:
    """``SHA256:<hex>`` of the key's DER SubjectPublicKeyInfo: how logs and errors name a key."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


# Flatcar's development update key (coreos-overlay coreos-base/coreos-au-key/files/developer-v1.pub.pem,
# the same at every supported tag): its private half is published next to it, so an image must never
# trust it for production. Named by key_id(); tests compare it with the real trees.
FLATCAR_DEVELOPMENT_KEY_ID = "SHA256:27ae1f1bd7650b2441c2d2dd4371363fd5fa237b2ef67d9608709f0c33dee941"


def _rsa_problem(key: object, what: str) -> str | None:
    """Why ``key`` cannot sign or verify payloads, or None."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"{what} is not an RSA key (update_engine verifies RSA PKCS#1 v1.5 signatures)"
    if not MIN_KEY_BITS <= key.key_size <= MAX_KEY_BITS:
        return f"{what} has {key.key_size} bits; use {MIN_KEY_BITS} to {MAX_KEY_BITS}"
    return None


def parse_public_key(data: bytes, what: str = "the key") -> RSAPublicKey:
    """An RSA public key from PEM (``PUBLIC KEY``); ``ValueError`` with one line otherwise. A private
    key is refused, so it cannot end up where a public key is published."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if b"PRIVATE KEY" in data:
        raise ValueError(f"{what} is a private key; give the public key (openssl pkey -pubout)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    problem = _rsa_problem(key, what)
    if problem:
        raise ValueError(problem)
    assert isinstance(key, rsa.RSAPublicKey)
    if key_id(key) == FLATCAR_DEVELOPMENT_KEY_ID:
        raise ValueError(f"{what} is Flatcar's development update key, whose private half is public")
    return key


def public_pem(key: RSAPublicKey) -> bytes:
    """The key as update_engine reads it (PEM SubjectPublicKeyInfo), the same bytes for the same key."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path, passphrase: bytes | None = None) -> RSAPrivateKey:
    """The signing key from a PEM file (PKCS#1 or PKCS#8, optionally encrypted). Errors name the file,
    never its content."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PiccoloError(
            f"{path}: cannot read the update signing key: {exc.strerror or exc}",
            hint="--update-signing-key or $PICCOLO_UPDATE_SIGNING_KEY names the private key file",
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise PiccoloError(
            f"{path}: the update signing key is encrypted and no passphrase was given"
            if passphrase is None
            else f"{path}: the update signing key is not encrypted, but a passphrase was given",
            hint="set PICCOLO_UPDATE_SIGNING_KEY_PASSPHRASE only for an encrypted key",
        ) from None
    except ValueError:
        raise PiccoloError(
            f"{path}: not a PEM RSA private key, or a wrong passphrase",
            hint="openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 makes one",
        ) from None
    problem = _rsa_problem(key, str(path))
    if problem:
        raise PiccoloError(
            problem, hint="openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 makes one"
        )
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


# --- signing and verifying -------------------------------------------------------------------------


def signature_blob(signature: bytes) -> bytes:
    """A ``Signatures`` message with one signature of the version clients check."""
    inner = varint_field(_SIG_VERSION, SIGNATURE_VERSION) + bytes_field(_SIG_DATA, signature)
    return bytes_field(_SIGS_SIGNATURE, inner)


def _signature_op(offset: int, size: int, block_size: int) -> bytes:
    extent = varint_field(_EXTENT_START, SPARSE_HOLE) + varint_field(
        _EXTENT_BLOCKS, (size + block_size - 1) // block_size
    )
    return (
        varint_field(_OP_TYPE, _REPLACE)
        + varint_field(_OP_DATA_OFFSET, offset)
        + varint_field(_OP_DATA_LENGTH, size)
        + bytes_field(_OP_DST_EXTENTS, extent)
    )


def _is_signature_op(field: Field, offset: int | None) -> bool:
    if field.number != _NOOP_OPERATIONS or offset is None:
        return False
    return any(f.number == _OP_DATA_OFFSET and f.value == offset for f in fields(_bytes(field)))


def manifest_for_signature(payload: Payload, signature_size: int) -> tuple[bytes, int]:
    """The manifest with the signature fields and dummy operation for a blob of ``signature_size``
    bytes (an earlier signature's are dropped), and the new signatures_offset. Every other field keeps
    its bytes; fields are in number order, as update_engine's own serialiser writes them."""
    offset = payload.signed_size - payload.metadata_size
    kept = [
        f
        for f in fields(payload.manifest)
        if f.number not in (_SIGNATURES_OFFSET, _SIGNATURES_SIZE)
        and not _is_signature_op(f, payload.signatures_offset)
    ]
    added = [
        Field(
            _NOOP_OPERATIONS,
            _LEN,
            b"",
            bytes_field(_NOOP_OPERATIONS, _signature_op(offset, signature_size, payload.block_size)),
        ),
        Field(_SIGNATURES_OFFSET, _VARINT, offset, varint_field(_SIGNATURES_OFFSET, offset)),
        Field(_SIGNATURES_SIZE, _VARINT, signature_size, varint_field(_SIGNATURES_SIZE, signature_size)),
    ]
    # A stable sort: repeated fields keep their order, the dummy operation comes after the others.
    ordered = sorted(kept + added, key=lambda f: f.number)
    return b"".join(f.raw for f in ordered), offset


def sign_payload(src: Path, dst: Path, key: RSAPrivateKey) -> str:
    """Write ``src`` signed by ``key`` to ``dst`` (any earlier signature replaced); returns the key's
    id. ``dst`` appears whole or not at all; ``src`` may be ``dst``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    payload = read_payload(src)
    size = len(signature_blob(b"\0" * (key.key_size // 8)))
    manifest, offset = manifest_for_signature(payload, size)
    tmp = dst.with_name(f".{dst.name}.signing")
    h = hashlib.sha256()
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            head = HEADER.pack(MAGIC, FORMAT_VERSION, len(manifest)) + manifest
            h.update(head)
            fout.write(head)
            fin.seek(payload.metadata_size)
            _copy(fin, fout, offset, h)
            signature = key.sign(h.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
            blob = signature_blob(signature)
            if len(blob) != size:
                raise PayloadError(f"{src}: a signature of unexpected size {len(signature)}")
            fout.write(blob)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return key_id(key.public_key())


def verify_payload(path: Path, key: RSAPublicKey) -> None:
    """Check ``path`` as update_engine would with ``key``; a one-line :class:`PayloadError` otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    payload = read_payload(path)
    signatures = read_signatures(path, payload)
    chosen = next((s for s in signatures if s.version == SIGNATURE_VERSION), None)
    if chosen is None:
        raise PayloadError(f"{path}: no signature of version {SIGNATURE_VERSION}, which clients check")
    try:
        key.verify(
            chosen.data, signed_digest(path, payload), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        )
    except InvalidSignature:
        raise PayloadError(
            f"{path}: its signature does not verify against {key_id(key)} (release.update_key)",
            hint="payloads the SDK makes carry Flatcar's development-key signature: "
            "sign them with `piccolo-build release sign`",
        ) from None
