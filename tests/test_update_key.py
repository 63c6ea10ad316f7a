"""Updates only our key can sign: release.update_key on the real trees, in a build, and in a release.

- every real tag chooses the update key the way piccolo_build.aukey relies on;
- on a copy of every tag, the update-key edit makes the board profiles (read by pkgcore, as portage
  reads them) enable USE=official for coreos-au-key and the SDK profile not, and the tag's own ebuild,
  run under those flags, installs our public key alone (and the SDK still gets its development keys);
- a build through the SDK stand-ins publishes payloads that verify against our key as update_engine
  checks them, refuses a development-signed one, and no private key reaches a log, the rendered overlay,
  the staged tree, the plan or the release; without an update key, plan and build say "development
  key" and --production refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolo_build import aukey, payload
from piccolo_build.config import update_key_pem
from piccolo_build.errors import PiccoloError
from tests.builder_helpers import DEFAULT_CONFIG, cli
from tests.fixtures.fakesdk import FakeSdk, GpgKey, seed_distfiles
from tests.fixtures.flatcar import NEWEST_STABLE, TAGS, FlatcarTrees
from tests.fixtures.payloads import DEV_KEY, make_key, openssl, signed_payload

PRIVATE_MARKERS = (b"PRIVATE KEY-----", b"-----BEGIN OPENSSH PRIVATE", b"-----BEGIN PGP PRIVATE")
EBUILD = "sdk_container/src/third_party/coreos-overlay/coreos-base/coreos-au-key/coreos-au-key-0.0.2.ebuild"


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway update key pair, outside every build tree."""
    return make_key(tmp_path_factory.mktemp("update-key"), "piccolo-update")


def private_key_hits(root: Path) -> list[str]:
    """Files under ``root`` that hold a PEM (or OpenSSH, PGP) private key."""
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(marker in data for marker in PRIVATE_MARKERS):
                hits.append(str(path.relative_to(root)))
    return hits


# --- the facts, read from every real tag ------------------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS)
def test_every_tag_chooses_the_update_key_as_we_rely_on(flatcar: FlatcarTrees, tag: str) -> None:
    tree = flatcar.tree(tag)
    ebuild = (tree / EBUILD).read_text()
    assert aukey._OFFICIAL.search(ebuild)
    # Without USE=official the image gets the development key pair, private half included.
    assert 'newins "${FILESDIR}/developer-v1.key.pem" update-payload-key.key.pem' in ebuild
    assert 'REQUIRED_USE="?? ( cros_host official )"' in ebuild
    # update_engine pulls the key package in; generate_update signs with the SDK's development key.
    engine = tree / "sdk_container/src/third_party/coreos-overlay/coreos-base/update_engine"
    assert "coreos-base/coreos-au-key" in (engine / "update_engine-9999.ebuild").read_text()
    util = (tree / "build_library/build_image_util.sh").read_text()
    assert '"/usr/share/update_engine/update-payload-key.key.pem"' in util
    assert (tree / aukey.PACKAGE_USE).is_file()
    assert aukey.ebuild(tree).name == "coreos-au-key-0.0.2.ebuild"


def _overlay_copy(flatcar: FlatcarTrees, tag: str, dest: Path) -> Path:
    """A checkout of ``tag`` as far as the update-key edit and portage's profiles reach: a writable copy
    of its coreos-overlay, its portage-stable (read only) linked in."""
    third = Path("sdk_container/src/third_party")
    tree = flatcar.tree(tag)
    (dest / third).mkdir(parents=True)
    shutil.copytree(tree / third / "coreos-overlay", dest / third / "coreos-overlay", symlinks=True)
    (dest / third / "portage-stable").symlink_to(tree / third / "portage-stable")
    return dest


def _install(tree: Path, ebuild: Path, use: str, dest: Path) -> dict[str, bytes]:
    """Run the ebuild's own src_install under ``use`` with PMS's insinto/newins, as portage would."""
    script = r"""
set -euo pipefail
use() { [[ " $USE " == *" $1 "* ]]; }
insinto() { INSDESTTREE=$1; }
newins() { mkdir -p "$D$INSDESTTREE"; cp "$1" "$D$INSDESTTREE/$2"; }
source "$EBUILD"
src_install
"""
    env = {
        "PATH": os.environ["PATH"],
        "USE": use,
        "D": str(dest),
        "EBUILD": str(ebuild),
        "FILESDIR": str(ebuild.parent / "files"),
        "WORKDIR": str(dest),
    }
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=30)
    return {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def _package_use(scripts: Path, profile: str) -> set[str]:
    """USE of coreos-base/coreos-au-key under ``profile``, computed by pkgcore from the tree itself."""
    from pkgcore.config import load_config
    from pkgcore.ebuild.atom import atom

    config = scripts / ".pkgcore"
    config.mkdir(exist_ok=True)
    third = scripts / "sdk_container/src/third_party"
    (config / "repos.conf").write_text(
        "[DEFAULT]\nmain-repo = portage-stable\n\n"
        f"[portage-stable]\nlocation = {third / 'portage-stable'}\n\n"
        f"[coreos-overlay]\nlocation = {third / 'coreos-overlay'}\n"
    )
    repo = load_config(location=str(config)).objects["repo"]["coreos-overlay"]
    node = next(p for p in repo.config.profiles if p.path == profile)
    pkg = max(repo.itermatch(atom(aukey.PACKAGE)))
    return set(repo.config.profiles.create_profile(node).pkg_use.pull_data(pkg))


@pytest.mark.parametrize("tag", TAGS)
def test_on_every_tag_the_board_installs_our_key_alone(
    flatcar: FlatcarTrees, tmp_path: Path, keypair: tuple[Path, Path], tag: str
) -> None:
    scripts = _overlay_copy(flatcar, tag, tmp_path / "scripts")
    pem = update_key_pem(str(keypair[1]))
    changed, version = aukey.set_update_key(scripts, pem)
    assert changed and version == f"0.0.2-r{aukey.revision(pem)}"
    assert aukey.set_update_key(scripts, pem) == (False, version)  # idempotent
    # portage builds the newest version, ours; the profiles give the board USE=official, not the SDK.
    package_dir = scripts / aukey.PACKAGE_DIR
    assert (package_dir / f"coreos-au-key-{version}.ebuild").readlink() == Path("coreos-au-key-0.0.2.ebuild")
    assert _package_use(scripts, "coreos/amd64/generic") == {"official"}
    assert _package_use(scripts, "coreos/arm64/generic") == {"official"}
    assert _package_use(scripts, "coreos/amd64/sdk") == set()
    board = _install(scripts, package_dir / f"coreos-au-key-{version}.ebuild", "official", tmp_path / "board")
    assert board == {"usr/share/update_engine/update-payload-key.pub.pem": pem}
    sdk = _install(scripts, package_dir / f"coreos-au-key-{version}.ebuild", "cros_host", tmp_path / "sdk")
    assert sorted(sdk) == [
        "usr/share/update_engine/update-payload-key.key.pem",
        "usr/share/update_engine/update-payload-key.pub.pem",
    ]
    # Another key: another revision, the old one gone.
    other = update_key_pem(str(make_key(tmp_path, "other")[1]))
    _, version2 = aukey.set_update_key(scripts, other)
    assert sorted(p.name for p in package_dir.glob("*.ebuild")) == sorted(
        ["coreos-au-key-0.0.2.ebuild", f"coreos-au-key-{version2}.ebuild"]
    )


def test_a_tree_that_chooses_the_key_differently_is_refused(
    flatcar: FlatcarTrees, tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    scripts = _overlay_copy(flatcar, NEWEST_STABLE, tmp_path / "scripts")
    ebuild = scripts / EBUILD
    ebuild.write_text(ebuild.read_text().replace("official-v2.pub.pem", "official-v3.pub.pem"))
    with pytest.raises(PiccoloError, match=r"does not install official-v2\.pub\.pem"):
        aukey.set_update_key(scripts, update_key_pem(str(keypair[1])))


def test_the_image_reports_must_name_our_package(tmp_path: Path) -> None:
    packages = tmp_path / "flatcar_production_image_packages.txt"
    packages.write_text("coreos-base/coreos-au-key-0.0.2::coreos-overlay\nsys-apps/systemd-257::x\n")
    with pytest.raises(
        PiccoloError, match=r"has coreos-base/coreos-au-key-0\.0\.2, not coreos-base/coreos-au-key-0\.0\.2-r5"
    ):
        aukey.check_image_reports(tmp_path, "0.0.2-r5")
    packages.write_text("coreos-base/coreos-au-key-0.0.2-r5::coreos-overlay\n")
    assert "in the image" in aukey.check_image_reports(tmp_path, "0.0.2-r5")
    (tmp_path / "flatcar_production_image_contents.txt").write_text(
        "-rw-r--r-- 1 root root 1675 2026-01-01 00:00 ./usr/share/update_engine/update-payload-key.key.pem\n"
    )
    with pytest.raises(PiccoloError, match="a private update key"):
        aukey.check_image_reports(tmp_path, "0.0.2-r5")
    packages.unlink()
    with pytest.raises(PiccoloError, match="missing"):
        aukey.check_image_reports(tmp_path, "0.0.2-r5")


# --- a build and its release --------------------------------------------------------------------------------


class Build:
    def __init__(self, root: Path, fake: FakeSdk, key: GpgKey, keypair: tuple[Path, Path]) -> None:
        self.root, self.fake, self.key, self.keypair = root, fake, key, keypair

    def run(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        args = ["build", "--config", str(DEFAULT_CONFIG), "--scripts-url", str(self.fake.upstream)]
        args += ["--no-sdk-image-check", "--set", f"release.update_key={self.keypair[1]}"]
        return cli(*args, *extra, cwd=self.root, env={"GNUPGHOME": str(self.key.home), **(env or {})})


@pytest.fixture
def build(
    tmp_path: Path, fakesdk: FakeSdk, gpg_key: GpgKey, locked_distfiles: Path, keypair: tuple[Path, Path]
) -> Iterator[Build]:
    root = tmp_path / "project"
    root.mkdir()
    seed_distfiles(locked_distfiles, root / "build")
    yield Build(root, fakesdk, gpg_key, keypair)
    shutil.rmtree(root / "build" / "scripts", ignore_errors=True)


@pytest.mark.slow
def test_a_build_publishes_payloads_only_our_key_signed(build: Build) -> None:
    r = build.run(
        "--set",
        f"release.signing_key={build.key.email}",
        "--require-signature",
        env={"PICCOLO_UPDATE_SIGNING_KEY": str(build.keypair[0])},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "development key" not in r.stdout + r.stderr
    out = build.root / "release"
    update = out / "amd64-usr" / "flatcar_test_update.gz"
    public = payload.parse_public_key(build.keypair[1].read_bytes())
    payload.verify_payload(update, public)
    # Independently: openssl recovers the SHA-256 of everything before the signature blob.
    info = payload.read_payload(update)
    (sig,) = payload.read_signatures(update, info)
    (build.root / "sig").write_bytes(sig.data)
    recovered = openssl(
        "pkeyutl", "-verifyrecover", "-pubin", "-inkey", str(build.keypair[1]),
        "-pkeyopt", "rsa_padding_mode:pkcs1", "-pkeyopt", "digest:sha256", "-in", str(build.root / "sig"),
    )  # fmt: skip
    assert recovered == __import__("hashlib").sha256(update.read_bytes()[: info.signed_size]).digest()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["update_key"] == payload.key_id(public)
    assert (
        subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, check=False).returncode
        == 0
    )
    # The image got our coreos-au-key (build_image's package list) and no private key (its file list).
    packages = (out / "amd64-usr" / "flatcar_production_image_packages.txt").read_text()
    pem = update_key_pem(str(build.keypair[1]))
    assert f"coreos-base/coreos-au-key-0.0.2-r{aukey.revision(pem)}::coreos-overlay" in packages
    assert (
        "update-payload-key.key.pem"
        not in (out / "amd64-usr" / "flatcar_production_image_contents.txt").read_text()
    )
    # The checkout's coreos-au-key installs our key under USE=official.
    scripts = build.root / "build" / "scripts"
    assert (scripts / aukey.PACKAGE_DIR / "files" / aukey.KEY_FILE).read_bytes() == pem
    # No private key in the logs, the rendered overlay, the state, the staging area or the release, and
    # neither the key's body: only its public id.
    body = b"".join(build.keypair[0].read_bytes().splitlines()[1:3])
    for where in (build.root / "build" / "logs", build.root / "build" / "overlay", out):
        assert private_key_hits(where) == []
        for f in where.rglob("*"):
            assert not f.is_file() or body not in f.read_bytes().replace(b"\n", b""), f
    assert body not in (r.stdout + r.stderr).replace("\n", "").encode()
    assert b"PRIVATE" not in (build.root / "build" / "state.json").read_bytes()
    # release verify agrees; the release as the SDK made it would not.
    v = cli("release", "verify", str(out), "--set", f"release.update_key={build.keypair[1]}", cwd=build.root)
    assert v.returncode == 0 and "good update signature on amd64-usr/flatcar_test_update.gz" in v.stdout, (
        v.stderr
    )


@pytest.mark.slow
def test_release_sign_after_a_build_without_the_key(build: Build, keypair: tuple[Path, Path]) -> None:
    """The split pipeline: the build job has no secret; the release job signs, verify then passes."""
    r = build.run()
    assert r.returncode == 0, r.stderr
    assert "sign them with `piccolo-build release sign`" in (build.root / "build/logs/verify.log").read_text()
    out = build.root / "release"
    sets = ("--set", f"release.update_key={keypair[1]}")
    v = cli("release", "verify", str(out), *sets, cwd=build.root)
    assert v.returncode == 1
    (line,) = [ln for ln in v.stderr.splitlines() if ln.startswith("error:")]
    # The first payload in order (the OEM payload, signed like the main one) is the one named.
    assert "flatcar_test_update-oem-qemu.gz: its signature does not verify against SHA256:" in line
    s = cli("release", "sign", str(out), *sets, "--update-signing-key", str(keypair[0]), cwd=build.root)
    assert s.returncode == 0, s.stderr
    assert cli("release", "verify", str(out), *sets, cwd=build.root).returncode == 0
    assert private_key_hits(out) == []
    # A key that is not the half of release.update_key is refused before anything changes.
    other = make_key(build.root.parent, "other")[0]
    bad = cli("release", "sign", str(out), *sets, "--update-signing-key", str(other), cwd=build.root)
    assert bad.returncode == 2 and "is not the private half of release.update_key" in bad.stderr


@pytest.mark.slow
def test_the_signing_key_must_stay_outside_the_build_tree(build: Build) -> None:
    inside = build.root / "build" / "update.key.pem"
    inside.parent.mkdir(exist_ok=True)
    shutil.copy(build.keypair[0], inside)
    r = build.run("--to", "preflight", "--update-signing-key", str(inside))
    assert r.returncode == 2 and "is inside the work directory" in r.stderr
    r = build.run(
        "--to", "preflight", "--require-signature", "--set", f"release.signing_key={build.key.email}"
    )
    assert r.returncode == 2 and "no update signing key was given" in r.stderr


@pytest.mark.slow
def test_without_an_update_key_plan_and_build_say_development_key(build: Build, fakesdk: FakeSdk) -> None:
    base = ["--config", str(DEFAULT_CONFIG)]
    plan = cli("plan", *base, cwd=build.root)
    assert plan.returncode == 0
    assert [ln for ln in plan.stderr.splitlines() if "development key" in ln] == [
        "warning: release.update_key is not set: the images trust Flatcar's development key, whose private "
        "half is public; they must not go to production"
    ]
    doc = json.loads(cli("plan", *base, "--json", cwd=build.root).stdout)
    assert any("development key" in w for w in doc["warnings"])
    for extra in ((), ("--dry-run",)):
        r = cli("build", *base, "--production", *extra, cwd=build.root)
        assert r.returncode == 2 and "--production: release.update_key is not set" in r.stderr, r.stderr
        assert not (build.root / "build" / "state.json").exists()
    # A build with an update key edits the checkout; the next one without undoes it, and says so.
    assert build.run("--to", "update-server").returncode == 0
    scripts = build.root / "build" / "scripts"
    package_use = scripts / aukey.PACKAGE_USE
    assert aukey.USE_LINE in package_use.read_text()
    fresh = ["--scripts-url", str(fakesdk.upstream), "--no-sdk-image-check", "--to", "update-server"]
    r = cli("build", *base, *fresh, cwd=build.root)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("warning: release.update_key is not set")
    assert aukey.USE_LINE not in package_use.read_text()
    assert sorted(p.name for p in (scripts / aukey.PACKAGE_DIR).glob("*.ebuild")) == [
        "coreos-au-key-0.0.2.ebuild"
    ]
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", str(aukey.PACKAGE_DIR), str(aukey.PACKAGE_USE)],
        cwd=scripts,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status == ""
    assert "earlier build's edits undone" in (build.root / "build" / "logs" / "update-key.log").read_text()


def test_plan_render_and_stage_hold_no_private_key(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    sets = ("--config", str(DEFAULT_CONFIG), "--set", f"release.update_key={keypair[1]}")
    plan = cli("plan", *sets, "--update-signing-key", str(keypair[0]), cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert (
        "update-key" in plan.stdout
        and payload.key_id(payload.parse_public_key(keypair[1].read_bytes())) in plan.stdout
    )
    assert not any(m.decode() in plan.stdout for m in PRIVATE_MARKERS)
    plan_json = cli("plan", *sets, "--json", cwd=tmp_path)
    assert not any(m.decode() in plan_json.stdout for m in PRIVATE_MARKERS)
    assert cli("render", *sets, "-o", str(tmp_path / "overlay"), cwd=tmp_path).returncode == 0
    assert cli("stage", str(tmp_path / "stage"), *sets, cwd=tmp_path).returncode == 0
    for tree in (tmp_path / "overlay", tmp_path / "stage"):
        assert any(tree.rglob("*.ebuild")) or any(tree.rglob("*.service"))
        assert private_key_hits(tree) == []
    # The scan itself finds a private key where there is one.
    shutil.copy(keypair[0], tmp_path / "stage" / "planted")
    assert private_key_hits(tmp_path / "stage") == ["planted"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"not a key", "not a PEM public key"),
        ("private", "is a private key"),
    ],
)
def test_a_bad_update_key_is_one_line(
    tmp_path: Path, keypair: tuple[Path, Path], content: object, message: str
) -> None:
    path = tmp_path / "key.pem"
    if content == "private":
        shutil.copy(keypair[0], path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    r = cli(
        "config", "show", "--config", str(DEFAULT_CONFIG), "--set", f"release.update_key={path}", cwd=tmp_path
    )
    assert r.returncode == 2
    assert r.stderr.splitlines()[0].startswith("error: command line: release.update_key:")
    assert message in r.stderr.splitlines()[0]


def test_a_development_signed_payload_fails_release_verify(
    tmp_path: Path, keypair: tuple[Path, Path], flatcar: FlatcarTrees
) -> None:
    """release verify on a release whose payload the SDK signed: one line, exit 1."""
    from piccolo_build import release

    dev = tmp_path / "dev.key.pem"
    dev.write_bytes((flatcar.tree(NEWEST_STABLE) / DEV_KEY).read_bytes())
    out = tmp_path / "release"
    (out / "amd64-usr").mkdir(parents=True)
    (out / "amd64-usr" / "flatcar_test_update.gz").write_bytes(signed_payload(b"usr" * 5000, dev))
    manifest = {
        "format": 1,
        "piccolo_version": "0.1.0",
        "files": [],
        "payloads": ["amd64-usr/flatcar_test_update.gz"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    release.write_sums(out)
    r = cli(
        "release",
        "verify",
        str(out),
        "--config",
        str(DEFAULT_CONFIG),
        "--set",
        f"release.update_key={keypair[1]}",
        cwd=tmp_path,
    )
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "does not verify against" in errors[0]
    # And Flatcar's development key itself is refused as release.update_key.
    pub = tmp_path / "dev.pub.pem"
    pub.write_bytes(openssl("pkey", "-in", str(dev), "-pubout"))
    r = cli("config", "show", "--set", f"release.update_key={pub}", cwd=tmp_path)
    assert r.returncode == 2 and "Flatcar's development update key" in r.stderr


def test_the_working_copy_links_large_files(tmp_path: Path) -> None:
    from piccolo_build.signing import _working_copy

    root = tmp_path / "release"
    (root / "amd64-usr").mkdir(parents=True)
    (root / "amd64-usr" / "image.bin").write_bytes(b"\0" * (2 << 20))
    (root / "SHA256SUMS").write_text("x\n")
    copy = _working_copy(root)
    assert (copy / "amd64-usr" / "image.bin").stat().st_ino == (
        root / "amd64-usr" / "image.bin"
    ).stat().st_ino
    assert (copy / "SHA256SUMS").stat().st_ino != (root / "SHA256SUMS").stat().st_ino
