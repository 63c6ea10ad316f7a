"""Update payload signatures, in the format update_engine checks (piccolo_build.payload).

Payloads come from tests/fixtures/payloads.py, a second implementation of the format whose signatures
are made by the openssl command update_engine's own signer runs; Flatcar's development key comes from
the real trees. RSA PKCS#1 v1.5 is deterministic, so a payload piccolo_build re-signs must be the very
bytes the fixture writes for the same data and key.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from piccolo_build import payload
from piccolo_build.errors import PiccoloError
from piccolo_build.payload import PayloadError
from tests.fixtures.flatcar import TAGS, FlatcarTrees, git_bytes
from tests.fixtures.payloads import (
    DEV_KEY,
    DEV_PUBLIC_KEY,
    make_key,
    openssl,
    signed_payload,
    unsigned_payload,
)

DATA = os.urandom(3 * 4096 + 123)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("keys")
    return {
        "ours": make_key(d, "ours"),
        "other": make_key(d, "other"),
        "big": make_key(d, "big", 4096),
    }


@pytest.fixture(scope="module")
def dev_key(flatcar: FlatcarTrees, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Flatcar's development key pair, as coreos-au-key ships it (the same file at every tag)."""
    d = tmp_path_factory.mktemp("devkey")
    blobs = {git_bytes(flatcar.repo, "rev-parse", f"{tag}:{DEV_KEY}") for tag in TAGS}
    assert len(blobs) == 1, "the development key differs between tags"
    private, public = d / "dev.key.pem", d / "dev.pub.pem"
    private.write_bytes(git_bytes(flatcar.repo, "cat-file", "blob", f"{TAGS[-1]}:{DEV_KEY}"))
    public.write_bytes(git_bytes(flatcar.repo, "cat-file", "blob", f"{TAGS[-1]}:{DEV_PUBLIC_KEY}"))
    return private, public


def public(path: Path) -> rsa.RSAPublicKey:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(path.read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def write(tmp_path: Path, data: bytes, name: str = "flatcar_test_update.gz") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_a_payload_signed_with_our_key_verifies(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    p = write(tmp_path, signed_payload(DATA, keys["ours"][0]))
    payload.verify_payload(p, public(keys["ours"][1]))
    info = payload.read_payload(p)
    assert info.signed and info.block_size == 4096
    assert info.signatures_offset == len(DATA)
    assert [s.version for s in payload.read_signatures(p, info)] == [2]


def test_another_key_is_refused(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    p = write(tmp_path, signed_payload(DATA, keys["other"][0]))
    with pytest.raises(
        PayloadError, match=r"does not verify against SHA256:[0-9a-f]{64} \(release.update_key\)"
    ):
        payload.verify_payload(p, public(keys["ours"][1]))


def test_a_development_key_payload_is_refused(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], dev_key: tuple[Path, Path]
) -> None:
    """What the SDK's generate_update makes: signed with the development key. It is a good signature
    (it verifies against the development public key), and piccolo-build refuses it for our key."""
    p = write(tmp_path, signed_payload(DATA, dev_key[0]))
    payload.verify_payload(p, public(dev_key[1]))
    with pytest.raises(PayloadError) as exc:
        payload.verify_payload(p, public(keys["ours"][1]))
    assert "\n" not in exc.value.message
    assert "piccolo-build release sign" in (exc.value.hint or "")


def test_the_development_key_is_named_by_its_id_and_refused_as_an_update_key(
    dev_key: tuple[Path, Path],
) -> None:
    assert payload.key_id(public(dev_key[1])) == payload.FLATCAR_DEVELOPMENT_KEY_ID
    with pytest.raises(ValueError, match="Flatcar's development update key"):
        payload.parse_public_key(dev_key[1].read_bytes())


@pytest.mark.parametrize("source", ["development", "unsigned", "ours"])
@pytest.mark.parametrize("key", ["ours", "big"])
def test_signing_writes_what_delta_generator_would(
    tmp_path: Path,
    keys: dict[str, tuple[Path, Path]],
    dev_key: tuple[Path, Path],
    source: str,
    key: str,
) -> None:
    """Re-signing a development-signed (or unsigned, or already ours) payload gives exactly the bytes
    of a payload signed with our key in the first place, also for a 4096-bit key whose signature blob
    is larger than the development key's (the manifest's signature fields and dummy operation change)."""
    original = {
        "development": lambda: signed_payload(DATA, dev_key[0]),
        "unsigned": lambda: unsigned_payload(DATA),
        "ours": lambda: signed_payload(DATA, keys[key][0]),
    }[source]()
    src = write(tmp_path, original, "in.gz")
    dst = tmp_path / "out.gz"
    private = payload.load_private_key(keys[key][0])
    key_id = payload.sign_payload(src, dst, private)
    assert dst.read_bytes() == signed_payload(DATA, keys[key][0])
    assert key_id == payload.key_id(public(keys[key][1]))
    payload.verify_payload(dst, public(keys[key][1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gz", "out.gz"]  # no temporary left


def test_openssl_recovers_the_digest_update_engine_compares(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], dev_key: tuple[Path, Path]
) -> None:
    """update_engine's GetRawHashFromSignature: EVP_PKEY_verify_recover, PKCS#1 padding, SHA-256; the
    digest it recovers must be the SHA-256 of everything before the signature blob."""
    src = write(tmp_path, signed_payload(DATA, dev_key[0]), "in.gz")
    dst = tmp_path / "out.gz"
    payload.sign_payload(src, dst, payload.load_private_key(keys["ours"][0]))
    info = payload.read_payload(dst)
    (sig,) = payload.read_signatures(dst, info)
    (tmp_path / "sig").write_bytes(sig.data)
    recovered = openssl(
        "pkeyutl", "-verifyrecover", "-pubin", "-inkey", str(keys["ours"][1]),
        "-pkeyopt", "rsa_padding_mode:pkcs1", "-pkeyopt", "digest:sha256", "-in", str(tmp_path / "sig"),
    )  # fmt: skip
    assert recovered == hashlib.sha256(dst.read_bytes()[: info.signed_size]).digest()


def test_a_changed_byte_is_refused(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    data = bytearray(signed_payload(DATA, keys["ours"][0]))
    data[200] ^= 1  # in the blobs
    p = write(tmp_path, bytes(data))
    with pytest.raises(PayloadError, match="does not verify"):
        payload.verify_payload(p, public(keys["ours"][1]))


def test_only_a_version_2_signature_counts(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    p = write(tmp_path, signed_payload(DATA, keys["ours"][0], version=1))
    with pytest.raises(PayloadError, match="no signature of version 2"):
        payload.verify_payload(p, public(keys["ours"][1]))


def test_an_unsigned_payload_is_refused(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    p = write(tmp_path, unsigned_payload(DATA))
    with pytest.raises(PayloadError, match="not signed"):
        payload.verify_payload(p, public(keys["ours"][1]))


def _hostile(good: bytes) -> dict[str, bytes]:
    manifest_size = struct.unpack(">Q", good[12:20])[0]
    return {
        "empty": b"",
        "short": b"CrAU\0\0",
        "gzip": b"\x1f\x8b\x08\0" + b"\0" * 40,
        "version 2": good[:4] + struct.pack(">Q", 2) + good[12:],
        "huge manifest size": good[:12] + struct.pack(">Q", (1 << 64) - 1) + good[20:],
        "manifest garbage": good[:20] + b"\xff" * manifest_size + good[20 + manifest_size :],
        "varint without end": good[:12] + struct.pack(">Q", 10) + b"\x80" * 10 + good[30:],
        "truncated": good[:-10],
        "appended": good + b"x",
    }


@pytest.mark.parametrize("case", list(_hostile(b"\0" * 40)))
def test_a_broken_payload_is_one_line_and_bounded(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], case: str
) -> None:
    p = write(tmp_path, _hostile(signed_payload(DATA, keys["ours"][0]))[case])
    started = time.monotonic()
    for attempt in (
        lambda: payload.verify_payload(p, public(keys["ours"][1])),
        lambda: payload.sign_payload(p, tmp_path / "out", payload.load_private_key(keys["ours"][0])),
    ):
        with pytest.raises(PayloadError) as exc:
            attempt()
        assert "\n" not in exc.value.message and str(p) in exc.value.message
    assert time.monotonic() - started < 5
    assert not (tmp_path / "out").exists()


def test_public_keys_are_checked(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    good = keys["ours"][1].read_bytes()
    assert payload.public_pem(payload.parse_public_key(good)) == good
    rsa_pkcs1 = openssl("rsa", "-pubin", "-in", str(keys["ours"][1]), "-RSAPublicKey_out")
    # update_engine's PEM_read_PUBKEY reads only SubjectPublicKeyInfo: a PKCS#1 key is accepted and
    # written out in that form.
    assert payload.public_pem(payload.parse_public_key(rsa_pkcs1)) == good
    with pytest.raises(ValueError, match="is a private key"):
        payload.parse_public_key(keys["ours"][0].read_bytes())
    openssl("genpkey", "-algorithm", "ED25519", "-out", str(tmp_path / "ed.key"))
    ed = openssl("pkey", "-in", str(tmp_path / "ed.key"), "-pubout")
    with pytest.raises(ValueError, match="not an RSA key"):
        payload.parse_public_key(ed)
    small, small_pub = make_key(tmp_path, "small", 1024)
    with pytest.raises(ValueError, match="1024 bits"):
        payload.parse_public_key(small_pub.read_bytes())
    with pytest.raises(PiccoloError, match="1024 bits"):
        payload.load_private_key(small)
    for junk in (b"", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", os.urandom(300)):
        with pytest.raises(ValueError, match="not a PEM public key"):
            payload.parse_public_key(junk)


def test_private_key_errors_never_show_the_key(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    encrypted = tmp_path / "enc.pem"
    openssl("pkey", "-in", str(keys["ours"][0]), "-aes256", "-passout", "pass:s3cret", "-out", str(encrypted))
    with pytest.raises(PiccoloError, match="encrypted and no passphrase") as exc:
        payload.load_private_key(encrypted)
    assert "PRIVATE" not in exc.value.message
    with pytest.raises(PiccoloError, match="wrong passphrase"):
        payload.load_private_key(encrypted, b"nope")
    assert payload.load_private_key(encrypted, b"s3cret").key_size == 2048
    with pytest.raises(PiccoloError, match="cannot read"):
        payload.load_private_key(tmp_path / "missing.pem")
    with pytest.raises(PiccoloError, match="not a PEM RSA private key"):
        payload.load_private_key(keys["ours"][1])
