"""``piccolo-build build --to update-server`` (the last step before the SDK) on every release that builds,
cloned from the real flatcar/scripts trees (``PICCOLO_FLATCAR_SCRIPTS``), and the refusal, right after
the checkout, of every one that does not (the verdict read from its tree, docs/flatcar.md).

Everything up to the SDK runs for real: the clone and checkout of the tag, its version.txt, the
overlay copied into its coreos-overlay, the in-tree pkgcheck, the agent's sdist and the locked sdists in
DISTDIR, the RDEPEND edit of its coreos-0.0.1.ebuild and the SERVER= edit of its set_lsb_release, which
is then run as build_image runs it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from piccolo_build.gentoo import COREOS_OVERLAY
from piccolo_build.lock import load_lock
from tests.builder_helpers import DEFAULT_CONFIG, cli
from tests.fixtures.fakesdk import VERSION_FILE, seed_distfiles
from tests.fixtures.flatcar import TAGS, FlatcarTrees, git, run_set_lsb_release
from tests.test_coreos_edit import rdepend_of

# What the trees' facts say (tests/test_tree.py compares these with the verdicts).
SUPPORTED = ["stable-4230.2.3", "stable-4593.2.5", "beta-4757.1.0", "alpha-4790.0.0"]
UNSUPPORTED = {
    "lts-4081.3.10": "no stable-keyworded dev-python/cffi, dev-python/cryptography, dev-python/pycparser "
    "(needed by dev-python/tpm2-pytss) at this tag"
}
SERVER = "https://updates.piccolo.space/v1/update/"  # update.server of piccolo.yaml
COREOS = Path(COREOS_OVERLAY) / "coreos-base" / "coreos"
LSB_RELEASE = "build_library/set_lsb_release"


@pytest.mark.slow
def test_every_tag_is_built_or_refused_here() -> None:
    assert sorted([*SUPPORTED, *UNSUPPORTED]) == sorted(TAGS)


def _build(flatcar: FlatcarTrees, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "build",
        "--config",
        DEFAULT_CONFIG,
        "--scripts-url",
        flatcar.url,
        "--no-sdk-image-check",
        *extra,
        cwd=root,
    )


def _status(scripts: Path) -> dict[str, set[str]]:
    """The checkout's changes against the tag, by kind (git status: M, D, ??)."""
    out: dict[str, set[str]] = {}
    argv = ["git", "status", "--porcelain", "--untracked-files=all", "--no-renames"]
    lines = subprocess.run(argv, cwd=scripts, capture_output=True, text=True, check=True).stdout.splitlines()
    for line in lines:
        out.setdefault(line[:2].strip(), set()).add(line[3:])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("tag", SUPPORTED)
def test_build_to_the_last_step_before_the_sdk_on_the_real_tree(
    flatcar: FlatcarTrees, tmp_path: Path, locked_distfiles: Path, tag: str
) -> None:
    seed_distfiles(locked_distfiles, tmp_path / "build")
    r = _build(flatcar, tmp_path, "--set", f"flatcar.release={tag}", "--to", "update-server")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "build finished: 11 steps ran, 0 skipped; output in build\n"
    work, scripts = tmp_path / "build", tmp_path / "build" / "scripts"

    # A real clone of the repository the variable names, checked out at the tag's commit.
    assert git(scripts, "config", "--get", "remote.origin.url") == flatcar.url
    assert git(scripts, "rev-parse", "HEAD") == git(flatcar.repo, "rev-parse", f"{tag}^{{commit}}")
    number = tag.split("-", 1)[1]
    version = dict(line.split("=", 1) for line in (scripts / VERSION_FILE).read_text().splitlines())
    assert version["FLATCAR_VERSION"] == number
    # The SDK version the build will use is the one the tag's version.txt pins.
    sdk_log = (work / "logs" / "sdk-image.log").read_text()
    assert (
        f"SDK version {version['FLATCAR_SDK_VERSION']}: FLATCAR_SDK_VERSION in build/scripts/{VERSION_FILE}\n"
        in (sdk_log)
    )
    assert "pkgcheck: app-admin/piccolod, coreos-base/piccolo-base, dev-python/asn1crypto" in (
        (work / "logs" / "tree-check.log").read_text()
    )
    # The checkout step read the verdict from the tree; the overlay was rendered for its Python.
    assert f"{tag}: builds: --base_sysexts entries" in (work / "logs" / "checkout.log").read_text()
    python = "python3_11" if tag == "stable-4230.2.3" else "python3_12"
    ebuild = scripts / COREOS_OVERLAY / "dev-python" / "tpm2-pytss" / "tpm2-pytss-2.3.0.ebuild"
    assert f"PYTHON_COMPAT=( {python} )\n" in ebuild.read_text()
    # The per-package bashrc file sits next to Flatcar's own (incus's), which stay.
    env_dir = scripts / COREOS_OVERLAY / "coreos" / "config" / "env"
    assert (env_dir / "dev-python" / "tpm2-pytss").is_file()
    assert git(scripts, "ls-files", "--deleted", "--", str(env_dir.relative_to(scripts))) == ""

    # The checkout differs from the tag by exactly our edits: the rendered packages copied in, the
    # coreos meta-package's ebuild and revision symlink, set_lsb_release.
    rendered = work / "overlay" / "coreos-overlay"
    ours = {f"{COREOS_OVERLAY}/{p.relative_to(rendered)}" for p in rendered.rglob("*") if p.is_file()}
    (old,) = (p for p in git(flatcar.repo, "ls-tree", "--name-only", f"{tag}:{COREOS}").split() if "-r" in p)
    new = f"coreos-0.0.1-r{int(old.removeprefix('coreos-0.0.1-r').removesuffix('.ebuild')) + 1}.ebuild"
    assert _status(scripts) == {
        "??": {*ours, f"{COREOS}/{new}"},
        "M": {f"{COREOS}/coreos-0.0.1.ebuild", LSB_RELEASE},
        "D": {f"{COREOS}/{old}"},
    }
    for rel in ours:
        assert (scripts / rel).read_bytes() == (
            rendered / rel.removeprefix(f"{COREOS_OVERLAY}/")
        ).read_bytes()
    assert (scripts / COREOS / new).readlink() == Path("coreos-0.0.1.ebuild")

    # RDEPEND as bash reads the real ebuild: the tag's list plus our base package, nothing else.
    original = tmp_path / "original.ebuild"
    original.write_text(git(flatcar.repo, "show", f"{tag}:{COREOS}/coreos-0.0.1.ebuild") + "\n")
    assert rdepend_of(scripts / COREOS / "coreos-0.0.1.ebuild") == [
        *rdepend_of(original),
        "coreos-base/piccolo-base",
    ]

    # The tag's own set_lsb_release, run as build_image runs it, now writes our server.
    assert run_set_lsb_release(scripts, tmp_path / "rootfs", "stable") == f"SERVER={SERVER}\nGROUP=stable\n"

    # The sdists the SDK will need are in its DISTDIR; no SDK step ran.
    distdir = scripts / "sdk_container" / ".cache" / "distfiles"
    assert sorted(p.name for p in distdir.iterdir()) == sorted(
        ["piccolod-0.1.0.tar.gz", *(p.filename for p in load_lock().packages)]
    )
    steps = json.loads((work / "state.json").read_text())["steps"]
    assert "update-server" in steps and not [s for s in steps if s.endswith("-amd64-usr")]


@pytest.mark.slow
@pytest.mark.parametrize("tag", sorted(UNSUPPORTED))
def test_a_release_that_does_not_build_is_refused_right_after_the_checkout(
    flatcar: FlatcarTrees, tmp_path: Path, tag: str
) -> None:
    r = _build(flatcar, tmp_path, "--set", f"flatcar.release={tag}")
    assert r.returncode == 2, r.stdout + r.stderr  # a user error (docs/flatcar.md)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: step checkout failed with exit code 2 after ")
    assert f": flatcar.release: {tag} does not build: {UNSUPPORTED[tag]} (log: " in errors[0]
    assert "<== [3/17] checkout FAILED (exit code 2)" in r.stderr
    # Read from the tree it checked out; nothing was copied into it.
    assert git(tmp_path / "build" / "scripts", "rev-parse", "HEAD") == git(
        flatcar.repo, "rev-parse", f"{tag}^{{commit}}"
    )
    assert not (tmp_path / "build" / "logs" / "overlay.log").exists()


@pytest.mark.slow
def test_channels_resolve_to_the_real_tags_and_an_unsupported_one_is_refused_after_the_checkout(
    flatcar: FlatcarTrees, tmp_path: Path
) -> None:
    r = _build(flatcar, tmp_path, "--set", "flatcar.release=beta", "--to", "checkout")
    assert r.returncode == 0, r.stdout + r.stderr
    head = git(tmp_path / "build" / "scripts", "rev-parse", "HEAD")
    assert head == git(flatcar.repo, "rev-parse", "beta-4757.1.0^{commit}")

    # lts is a channel: its newest tag is only known after the checkout, and is refused there.
    r = _build(flatcar, tmp_path, "--set", "flatcar.release=lts", "--to", "update-server")
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: step checkout failed with exit code 2 after ")
    assert ": flatcar.release: lts-4081.3.10 does not build: no stable-keyworded dev-python/cffi" in errors[0]
    assert not (tmp_path / "build" / "logs" / "overlay.log").exists()
