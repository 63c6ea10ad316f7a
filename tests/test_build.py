"""``piccolo-build build`` on the real flatcar/scripts trees with stand-ins for the SDK container (real
git, real gpg, real tar, the tags' own set_lsb_release and coreos-0.0.1.ebuild).

The stand-ins record their argv (tests/fixtures/fakesdk.py), so these tests assert the exact SDK
commands and their order, where the overlay and the sdist land, the RDEPEND edit, skipping, --from
resumption, the failure path and the signed, verified release. The locked dependency sdists come
from the tests' download cache (seeded into each build's ``build/distfiles``; nothing is downloaded).
The SDK image check through Docker is tested in tests/test_sdk_docker.py; these builds run with
``--no-sdk-image-check``.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from piccolo_build.actions import config_digest
from piccolo_build.commands.build_cmd import facts
from piccolo_build.config import BuildConfig, load_config
from piccolo_build.context import BuildContext
from piccolo_build.lock import FILES_HOST, load_lock
from piccolo_build.plan import plan
from piccolo_build.sdk import Executor, Options
from tests.builder_helpers import AT_A_TERMINAL, DEFAULT_CONFIG, SYSEXT_PACKAGES, cli
from tests.fixtures.fakesdk import VERSION_FILE, FakeSdk, GpgKey, seed_distfiles
from tests.fixtures.flatcar import FLATCAR_SYSEXTS, NEWEST_STABLE

OVERLAY = Path("sdk_container/src/third_party/coreos-overlay")
DISTDIR = Path("sdk_container/.cache/distfiles")
SDK = ["run_sdk_container", "-a", "all", "--"]


@dataclass
class Project:
    root: Path
    fake: FakeSdk
    key: GpgKey

    @property
    def work(self) -> Path:
        return self.root / "build"

    @property
    def scripts(self) -> Path:
        return self.work / "scripts"

    @property
    def out(self) -> Path:
        return self.root / "release"

    @property
    def cache(self) -> Path:
        return self.work / "distfiles"

    def build(self, *extra: str, signed: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["build", "--config", str(DEFAULT_CONFIG), "--scripts-url", str(self.fake.upstream)]
        args.append("--no-sdk-image-check")
        if signed:
            args += ["--set", f"release.signing_key={self.key.email}"]
        return cli(*args, *extra, cwd=self.root, env={"GNUPGHOME": str(self.key.home)})

    def sdk_calls(self) -> list[list[str]]:
        return self.fake.calls()


@pytest.fixture
def project(tmp_path: Path, fakesdk: FakeSdk, gpg_key: GpgKey, locked_distfiles: Path) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    seed_distfiles(locked_distfiles, root / "build")
    project = Project(root, fakesdk, gpg_key)
    yield project
    shutil.rmtree(project.scripts, ignore_errors=True)  # a checkout of a real tree: about 100 MB


def _cfg(**overrides: str) -> BuildConfig:
    return load_config(DEFAULT_CONFIG, overrides=overrides)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stderr


def _ok_out(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


# Ours first, then the tags' own --base_sysexts list (stable-4593 and beta-4757 both split at '|'):
# sysext_prod_builder builds each entry on the packages of those before it.
BASE_SYSEXTS = f"piccolod|{SYSEXT_PACKAGES},{FLATCAR_SYSEXTS}"
# build_image's image arguments: beta-4757 on, image_to_vm.sh wants the qemu OEM sysext prebuilt.
IMAGE_TYPES = {
    NEWEST_STABLE: ["prod"],
    "beta-4757.1.0": ["--oem_sysexts=qemu", "prod", "oem_sysext"],
}


def expected_calls(
    board: str = "amd64-usr", group: str = "stable", tag: str = NEWEST_STABLE
) -> list[list[str]]:
    packages = ["./build_packages", f"--board={board}"]
    emerge = [f"emerge-{board}", "--usepkg", "--getbinpkg", "--with-bdeps=y", "--buildpkg", "--verbose"]
    emerge += SYSEXT_PACKAGES.split("&")
    image = [
        "./build_image",
        f"--board={board}",
        f"--group={group}",
        f"--base_sysexts={BASE_SYSEXTS}",
        "--replace",
        *IMAGE_TYPES[tag],
    ]
    vm = [
        "./image_to_vm.sh",
        f"--from=/mnt/host/source/src/build/images/{board}/latest",
        f"--board={board}",
        "--format=qemu_uefi",
        "--image_compression_formats=none",
    ]
    out = []
    for cmd in (packages, emerge, image, vm):
        out.append([*SDK, *cmd])
        out.append([cmd[0].removeprefix("./"), *cmd[1:]])
    return out


def test_full_build_runs_the_exact_sdk_commands_and_publishes_a_signed_release(project: Project) -> None:
    err = _ok(project.build())

    # The SDK commands, in order, each through run_sdk_container (which records first).
    assert project.sdk_calls() == expected_calls()

    # The newest stable tag is checked out (not the branch, which is at alpha-4790), with its real tree.
    assert _git(project.scripts, "rev-parse", "HEAD") == project.fake.tag_commit(NEWEST_STABLE)
    assert (project.scripts / VERSION_FILE).read_text().startswith("FLATCAR_VERSION=4593.2.5\n")

    # The rendered overlay's packages sit where the SDK reads them.
    overlay = project.scripts / OVERLAY
    ebuild = overlay / "app-admin" / "piccolod" / "piccolod-0.1.0.ebuild"
    rendered = (
        project.work / "overlay" / "coreos-overlay" / "app-admin" / "piccolod" / "piccolod-0.1.0.ebuild"
    )
    assert ebuild.read_bytes() == rendered.read_bytes()
    assert (overlay / "coreos-base" / "piccolo-base" / "files" / "10-piccolod-dependency.conf").is_file()

    # The sdist is in the SDK's DISTDIR, and the package Manifest describes exactly that file.
    distfile = project.scripts / "sdk_container" / ".cache" / "distfiles" / "piccolod-0.1.0.tar.gz"
    manifest_line = (overlay / "app-admin" / "piccolod" / "Manifest").read_text().split()
    assert manifest_line[:3] == ["DIST", "piccolod-0.1.0.tar.gz", str(distfile.stat().st_size)]

    # The locked dependency sdists were verified in the cache and copied into DISTDIR, where the
    # (fake) emerge found each with the size and SHA512 of its dev-python Manifest: the sysext's
    # packages and, through tpm2-pytss's BDEPEND, pkgconfig.
    emerge_log = (project.work / "logs" / "sysext-packages-amd64-usr.log").read_text()
    for pkg in load_lock().packages:
        assert (project.scripts / DISTDIR / pkg.filename).read_bytes() == (
            project.cache / pkg.filename
        ).read_bytes()
        assert f">>> {pkg.filename}: checksums ok" in emerge_log
    assert (
        "verified 4 files in build/distfiles against piccolo.lock.json"
        in (project.work / "logs" / "distfiles.log").read_text()
    )

    # The real coreos-base/coreos pulls in the base-image package, and its revision symlink was bumped.
    coreos = overlay / "coreos-base" / "coreos"
    assert re.search(r"^\s*coreos-base/piccolo-base\s*$", (coreos / "coreos-0.0.1.ebuild").read_text(), re.M)
    assert sorted(p.name for p in coreos.glob("coreos-0.0.1-r*.ebuild")) == ["coreos-0.0.1-r320.ebuild"]
    assert (coreos / "coreos-0.0.1-r320.ebuild").readlink() == Path("coreos-0.0.1.ebuild")

    # The release: artefacts, sdist, checksums, manifest, signatures; verified before success.
    files = sorted(p.relative_to(project.out).as_posix() for p in project.out.rglob("*") if p.is_file())
    assert files == [
        "SHA256SUMS",
        "SHA256SUMS.asc",
        "amd64-usr/flatcar_production_image.bin",
        "amd64-usr/flatcar_production_image.vmlinuz",
        "amd64-usr/flatcar_production_image_contents.txt",
        "amd64-usr/flatcar_production_image_packages.txt",
        "amd64-usr/flatcar_production_qemu_uefi.sh",
        "amd64-usr/flatcar_production_qemu_uefi_efi_code.qcow2",
        "amd64-usr/flatcar_production_qemu_uefi_efi_vars.qcow2",
        "amd64-usr/flatcar_production_qemu_uefi_image.img",
        "amd64-usr/flatcar_production_update.bin",
        "amd64-usr/flatcar_production_update.bin.asc",
        "amd64-usr/flatcar_test_update-oem-qemu.gz",
        "amd64-usr/flatcar_test_update-oem-qemu.gz.asc",
        "amd64-usr/flatcar_test_update.gz",
        "amd64-usr/flatcar_test_update.gz.asc",
        "amd64-usr/version.txt",
        "manifest.json",
        "piccolod-0.1.0.tar.gz",
    ]
    manifest = json.loads((project.out / "manifest.json").read_text())
    # The qemu_uefi image's OEM payload (made by the tag's image_to_vm.sh at stable-4593), listed with
    # what an update server offers it as.
    oem = project.out / "amd64-usr" / "flatcar_test_update-oem-qemu.gz"
    assert [(o["path"], o["oem"], o["offer_as"], o["size"]) for o in manifest["oem_payloads"]] == [
        ("amd64-usr/flatcar_test_update-oem-qemu.gz", "qemu", "oem-qemu.gz", oem.stat().st_size)
    ]
    assert "amd64-usr/flatcar_test_update-oem-qemu.gz" in manifest["payloads"]
    cfg = _cfg(**{"release.signing_key": project.key.email})
    assert manifest["piccolo_version"] == "0.1.0"
    assert manifest["flatcar_tag"] == NEWEST_STABLE
    assert manifest["flatcar_commit"] == project.fake.tag_commit(NEWEST_STABLE)
    assert manifest["sdk_version"] == "4593.0.0"  # from the tag's version.txt: no sdk_version configured
    assert manifest["boards"] == ["amd64-usr"]
    assert manifest["config_sha256"] == config_digest(cfg)
    assert manifest["agent_sdist"]["size"] == distfile.stat().st_size
    # The image really was built with our --base_sysexts, unmangled by the trip through the SDK scripts.
    image = (project.out / "amd64-usr" / "flatcar_production_image.bin").read_text()
    assert f"base_sysexts={BASE_SYSEXTS}\n" in image
    assert "group=stable" in image
    # The tag's own set_lsb_release, run where build_image's start_image runs it, wrote our server.
    assert "/usr/share/flatcar/update.conf: SERVER=https://updates.piccolo.space/v1/update/\n" in image
    assert "/usr/share/flatcar/update.conf: GROUP=stable\n" in image
    assert "public.update.flatcar-linux.net" not in image

    # Independent checks with the real tools.
    sums = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=project.out, check=False)
    assert sums.returncode == 0
    for sig in (
        "SHA256SUMS.asc",
        "amd64-usr/flatcar_test_update.gz.asc",
        "amd64-usr/flatcar_test_update-oem-qemu.gz.asc",
    ):
        r = subprocess.run(
            ["gpg", "--batch", "--verify", sig, sig.removesuffix(".asc")],
            cwd=project.out,
            env=project.key.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0 and "Good signature" in r.stderr, r.stderr
    listing = subprocess.run(
        ["tar", "-tzf", "piccolod-0.1.0.tar.gz"], cwd=project.out, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "piccolod-0.1.0/piccolod/__init__.py" in listing
    assert "piccolod-0.1.0/pyproject.toml" in listing
    assert not [m for m in listing if "piccolo_build" in m]

    # Progress and logs.
    assert "==> [14/18] build-image-amd64-usr" in err
    assert re.search(r"<== \[14/18\] build-image-amd64-usr ok in 0:00:\d\d", err)
    log = (project.work / "logs" / "build-image-amd64-usr.log").read_text()
    assert "$ ./run_sdk_container -a all -- ./build_image --board=amd64-usr" in log
    assert "Done. Image(s) created in" in log
    assert (project.work / "release-staging").exists() is False


@pytest.mark.slow
def test_a_second_build_skips_what_is_done_and_repairs_the_overlay(project: Project) -> None:
    _ok(project.build())
    project.fake.reset_calls()
    stale = project.scripts / OVERLAY / "app-admin" / "piccolod" / "stale-file"
    stale.write_text("left over from an older overlay\n")

    r = project.build()
    err = _ok(r)
    assert project.sdk_calls() == []
    for step in (
        "tree-check",
        *(f"{s}-amd64-usr" for s in ("build-packages", "sysext-packages", "build-image")),
    ):
        assert f"{step}: done for the same inputs, skipped" in err
    assert "image-to-vm-amd64-usr: done for the same inputs, skipped" in err
    assert "build finished: 13 steps ran, 5 skipped" in r.stdout
    assert not stale.exists()  # the overlay step replaces package directories whole
    assert (project.out / "SHA256SUMS.asc").is_file()


@pytest.mark.slow
def test_changing_only_the_signing_key_rebuilds_nothing(project: Project) -> None:
    _ok(project.build(signed=False))
    assert not list(project.out.rglob("*.asc"))
    project.fake.reset_calls()
    _ok(project.build())
    assert project.sdk_calls() == []
    assert (project.out / "SHA256SUMS.asc").is_file()


@pytest.mark.slow
def test_from_reruns_a_step_and_everything_after_it(project: Project) -> None:
    _ok(project.build())
    project.fake.reset_calls()
    _ok(project.build("--from", "build-image-amd64-usr"))
    assert project.sdk_calls() == expected_calls()[4:]

    project.fake.reset_calls()
    _ok(project.build("--from", "build-packages-amd64-usr", "--to", "sysext-packages-amd64-usr"))
    assert project.sdk_calls() == expected_calls()[:4]


@pytest.mark.slow
def test_a_failing_step_stops_the_build_and_resuming_finishes_it(project: Project) -> None:
    project.fake.fail("build_image", 3)
    r = project.build()
    assert r.returncode == 3, r.stdout + r.stderr
    assert [c[0] for c in project.sdk_calls()] == [
        "run_sdk_container",
        "build_packages",
        "run_sdk_container",
        "emerge-amd64-usr",
        "run_sdk_container",
        "build_image",
    ]
    log = project.work / "logs" / "build-image-amd64-usr.log"
    assert "error: step build-image-amd64-usr failed with exit code 3 after 0:00:0" in r.stderr
    assert "(log: build/logs/build-image-amd64-usr.log)" in r.stderr
    assert re.search(r"^last \d+ lines of build/logs/build-image-amd64-usr\.log:$", r.stderr, re.M)
    assert "  | build_image: compiling part 5" in r.stderr
    assert "  | build_image: error: injected failure" in r.stderr
    assert "injected failure" in log.read_text()
    assert not project.out.exists()  # nothing half-published
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint:"))
    resume = shlex.split(hint.split("resume with: ", 1)[1])
    assert resume[:2] == ["piccolo-build", "build"]
    assert resume[-2:] == ["--from", "build-image-amd64-usr"]

    # Fixed: the printed command resumes at the failed step; what was done is not redone.
    project.fake.heal()
    project.fake.reset_calls()
    r2 = cli(*resume[1:], cwd=project.root, env={"GNUPGHOME": str(project.key.home)})
    _ok(r2)
    assert project.sdk_calls() == expected_calls()[4:]
    assert (project.out / "SHA256SUMS.asc").is_file()


@pytest.mark.slow
def test_after_a_failure_a_plain_rebuild_skips_the_finished_steps(project: Project) -> None:
    project.fake.fail("image_to_vm.sh", 42)
    assert project.build().returncode == 42
    project.fake.heal()
    project.fake.reset_calls()
    _ok(project.build())
    assert project.sdk_calls() == expected_calls()[6:]


@pytest.mark.slow
def test_a_new_stable_tag_rebuilds_everything(project: Project) -> None:
    _ok(project.build())
    project.fake.add_tag("stable-4593.2.6", "4593.0.0")
    project.fake.reset_calls()
    _ok(project.build())
    assert project.sdk_calls() == expected_calls()
    manifest = json.loads((project.out / "manifest.json").read_text())
    assert manifest["flatcar_tag"] == "stable-4593.2.6"


@pytest.mark.slow
def test_a_pinned_beta_builds_the_oem_sysext_before_image_to_vm(project: Project) -> None:
    _ok(project.build("--set", "flatcar.release=beta-4757.1.0"))
    assert _git(project.scripts, "rev-parse", "HEAD") == project.fake.tag_commit("beta-4757.1.0")
    # The stand-in image_to_vm.sh, reading the tag's vm_image_util.sh, insists on oem-qemu.raw.
    assert project.sdk_calls() == expected_calls(tag="beta-4757.1.0")
    manifest = json.loads((project.out / "manifest.json").read_text())
    assert (manifest["flatcar_tag"], manifest["sdk_version"]) == ("beta-4757.1.0", "4757.0.0")
    images = project.scripts / "__build__" / "images" / "images" / "amd64-usr" / "latest"
    assert (images / "oem-qemu.raw").is_file()
    # build_image oem_sysext made the OEM payload this time; the release carries it, signed.
    assert [o["path"] for o in manifest["oem_payloads"]] == ["amd64-usr/flatcar_test_update-oem-qemu.gz"]
    assert (project.out / "amd64-usr" / "flatcar_test_update-oem-qemu.gz.asc").is_file()


def _sysext_tree(project: Project, name: str) -> tuple[list[str], list[str]]:
    """What the stand-in build_image installed into sysext ``name``, and the packages it was built on."""
    images = project.scripts / "__build__" / "images" / "images" / "amd64-usr" / "latest"
    return (
        (images / f"{name}_packages.txt").read_text().split(),
        (images / f"{name}_base_pkginfo.txt").read_text().split(),
    )


@pytest.mark.slow
def test_the_piccolod_sysext_holds_all_it_needs_with_or_without_docker_flatcar(project: Project) -> None:
    _ok(project.build(signed=False))
    with_docker, base = _sysext_tree(project, "piccolod")
    # Built first, on the base image alone: every package of its entry and what they need is in it.
    assert base == []
    assert set(SYSEXT_PACKAGES.split("&")) | {"dev-python/cffi", "dev-python/cryptography"} <= set(
        with_docker
    )
    _docker, docker_base = _sysext_tree(project, "docker-flatcar")
    assert set(with_docker) <= set(docker_base)  # docker's sysext is built on ours, not the other way
    # A release whose build_image lists no docker-flatcar: the plan and the sysext stay the same.
    build_image = project.fake.show(NEWEST_STABLE, "build_image").decode()
    docker_entry = FLATCAR_SYSEXTS.split(",")[1]
    assert f",{docker_entry}" in build_image
    without = build_image.replace(f",{docker_entry}", "").encode()
    project.fake.release("stable-4593.2.6", {"build_image": without})
    project.fake.reset_calls()
    _ok(project.build(signed=False))
    assert _git(project.scripts, "rev-parse", "HEAD") == project.fake.tag_commit("stable-4593.2.6")
    ours_first = f"--base_sysexts=piccolod|{SYSEXT_PACKAGES},{FLATCAR_SYSEXTS.split(',')[0]}"
    assert ours_first in next(c for c in project.sdk_calls() if c[0] == "build_image")
    r = cli("plan", "--config", DEFAULT_CONFIG, "--json", "--scripts-dir", project.scripts)
    steps = {s["name"]: s for s in json.loads(_ok_out(r))["steps"]}
    assert ours_first in steps["build-image-amd64-usr"]["argv"]
    without_docker, base = _sysext_tree(project, "piccolod")
    assert (without_docker, base) == (with_docker, [])


@pytest.mark.slow
def test_an_unknown_pinned_tag_stops_at_the_checkout(project: Project) -> None:
    r = project.build("--set", "flatcar.release=stable-1.2.3")
    assert r.returncode == 2
    assert "tag stable-1.2.3 does not exist" in r.stderr
    assert project.sdk_calls() == []


@pytest.mark.slow
def test_a_missing_signing_key_fails_before_anything_starts(project: Project) -> None:
    r = project.build("--set", "release.signing_key=nobody@piccolo.test", signed=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: release.signing_key: no secret key 'nobody@piccolo.test'" in r.stderr
    assert not project.scripts.exists()  # not even cloned
    assert project.sdk_calls() == []


@pytest.mark.slow
def test_two_boards_and_an_unsigned_release(project: Project) -> None:
    _ok(project.build("--set", "boards=amd64-usr,arm64-usr", "--set", "update.group=beta", signed=False))
    assert project.sdk_calls() == expected_calls("amd64-usr", "beta") + expected_calls("arm64-usr", "beta")
    manifest = json.loads((project.out / "manifest.json").read_text())
    assert manifest["boards"] == ["amd64-usr", "arm64-usr"]
    assert "arm64-usr/flatcar_test_update.gz" in manifest["payloads"]
    assert "arm64-usr/flatcar_test_update-oem-qemu.gz" in manifest["payloads"]
    assert not list(project.out.rglob("*.asc"))


@pytest.mark.slow
def test_dry_run_runs_nothing(project: Project) -> None:
    r = project.build("--dry-run")
    _ok(r)
    assert not project.work.exists() or not project.scripts.exists()
    assert project.sdk_calls() == []
    assert "[14/18] build-image-amd64-usr: would run: ./run_sdk_container -a all -- ./build_image" in r.stderr

    _ok(project.build())
    project.fake.reset_calls()
    r = project.build("--dry-run")
    assert "[14/18] build-image-amd64-usr: would skip" in r.stderr
    assert project.sdk_calls() == []


@pytest.mark.slow
def test_unknown_step_names_are_refused(project: Project) -> None:
    r = project.build("--from", "build-imag")
    assert r.returncode == 2
    assert "--from build-imag: no such step" in r.stderr


@pytest.mark.slow
def test_live_progress_shows_step_elapsed_time_and_log_tail(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("GNUPGHOME", str(project.key.home))
    project.fake.slow("build_packages", 2)
    cfg = _cfg()
    ctx = BuildContext(scripts_url=str(project.fake.upstream), check_sdk_image=False)
    f = facts(cfg)
    out = io.StringIO()
    Executor(cfg, ctx, f, plan(cfg, ctx, f), out).execute(
        Options(to_step="build-packages-amd64-usr", heartbeat=0.25, tty=False)
    )
    text = out.getvalue()
    assert re.search(
        r"^\.\.\. \[12/17\] build-packages-amd64-usr 0:00:0\d \| build_packages: working, line \d+$",
        text,
        re.M,
    )

    # On a terminal the block (status + last lines) is redrawn in place.
    tty = io.StringIO()
    Executor(cfg, ctx, f, plan(cfg, ctx, f), tty).execute(
        Options(from_step="build-packages-amd64-usr", to_step="build-packages-amd64-usr", tty=True)
    )
    drawn = tty.getvalue()
    assert "\x1b[K... [12/17] build-packages-amd64-usr 0:00:0" in drawn
    assert re.search(r"\x1b\[K    build_packages: working, line \d+\n", drawn)
    assert "\x1b[4F\x1b[J" in drawn  # status line + 3 tail lines erased before the next draw


@pytest.mark.slow
def test_ctrl_c_stops_the_running_step_and_records_nothing_for_it(project: Project) -> None:
    project.fake.slow("build_packages", 60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICCOLO_")}
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack, should it hang
    argv = [*AT_A_TERMINAL, sys.executable, "-m", "piccolo_build", "build", "--config", str(DEFAULT_CONFIG)]
    argv += ["--scripts-url", str(project.fake.upstream), "--no-sdk-image-check"]
    proc = subprocess.Popen(argv, cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = project.work / "logs" / "build-packages-amd64-usr.log"
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "working" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "build_packages never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            stacks = proc.communicate()[1].decode()
            raise AssertionError(f"still running 30 s after SIGINT: {stacks}") from None
        assert rc == 130, proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, err = proc.communicate()
    assert b"interrupted" in err
    steps = json.loads((project.work / "state.json").read_text())["steps"]
    assert "update-server" in steps
    assert "build-packages-amd64-usr" not in steps
    size = log.stat().st_size
    time.sleep(0.5)
    assert log.stat().st_size == size  # the fake build_packages is gone, not writing on


@pytest.mark.slow
def test_a_non_free_licence_file_lands_in_the_overlay_licenses_dir(project: Project) -> None:
    _ok(project.build("--set", "package.license=Piccolo-EULA", "--to", "overlay", signed=False))
    assert (project.scripts / OVERLAY / "licenses" / "Piccolo-EULA").is_file()
    assert project.sdk_calls() == []


def _tamper(path: Path) -> None:
    """Flip one byte in the middle: same size, different digests."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_tampered_distfile_stops_the_build_before_any_sdk_step(
    project: Project, locked_distfiles: Path
) -> None:
    _tamper(project.cache / "pyyaml-6.0.4.tar.gz")
    r = project.build()
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "step distfiles failed" in errors[0]
    assert "pyyaml-6.0.4.tar.gz: sha256, blake2b, sha512 differ from the lock" in errors[0]
    assert project.sdk_calls() == []
    assert not (project.scripts / DISTDIR / "pyyaml-6.0.4.tar.gz").exists()
    assert not project.out.exists()

    # Put the real file back: the build goes on from there.
    (project.cache / "pyyaml-6.0.4.tar.gz").write_bytes(
        (locked_distfiles / "pyyaml-6.0.4.tar.gz").read_bytes()
    )
    _ok(project.build())
    assert project.sdk_calls() == expected_calls()


@pytest.mark.slow
def test_every_build_verifies_and_repairs_distdir_without_rebuilding(project: Project) -> None:
    _ok(project.build())
    project.fake.reset_calls()
    in_sdk = project.scripts / DISTDIR / "asn1crypto-1.5.1.tar.gz"
    _tamper(in_sdk)
    r = project.build()
    _ok(r)
    assert in_sdk.read_bytes() == (project.cache / "asn1crypto-1.5.1.tar.gz").read_bytes()
    assert "placed asn1crypto-1.5.1.tar.gz in" in (project.work / "logs" / "distfiles.log").read_text()
    assert project.sdk_calls() == []  # same lock, same files: nothing to rebuild


@pytest.fixture
def mirror(tmp_path: Path, locked_distfiles: Path) -> Iterator[tuple[str, list[str]]]:
    """The locked sdists under their PyPI paths, served over real HTTP on 127.0.0.1."""
    root = tmp_path / "mirror"
    for pkg in load_lock().packages:
        target = root / pkg.url.removeprefix(FILES_HOST)
        target.parent.mkdir(parents=True)
        target.write_bytes((locked_distfiles / pkg.filename).read_bytes())
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, name="mirror", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.slow
def test_only_missing_distfiles_are_downloaded(project: Project, mirror: tuple[str, list[str]]) -> None:
    url, requests = mirror
    (project.cache / "pkgconfig-1.6.0.tar.gz").unlink()
    _ok(project.build("--distfiles-mirror", url, "--to", "build-packages-amd64-usr"))
    assert [r.rsplit("/", 1)[1] for r in requests] == ["pkgconfig-1.6.0.tar.gz"]
    log = (project.work / "logs" / "distfiles.log").read_text()
    assert f"downloading 1 missing into build/distfiles from {url}: pkgconfig-1.6.0.tar.gz" in log
    assert (project.scripts / DISTDIR / "pkgconfig-1.6.0.tar.gz").is_file()

    requests.clear()
    _ok(project.build("--distfiles-mirror", url, "--to", "build-packages-amd64-usr"))
    assert requests == []  # kept in the cache: verified, not downloaded again


# --- the update server, --from after a change, a newly pinned tag, a required signature ----------


def _image(project: Project, board: str = "amd64-usr") -> str:
    return (project.out / board / "flatcar_production_image.bin").read_text()


@pytest.mark.slow
def test_a_changed_update_server_reaches_the_image(project: Project) -> None:
    _ok(project.build())
    script = project.scripts / "build_library" / "set_lsb_release"
    assert "SERVER=https://updates.piccolo.space/v1/update/\nGROUP=$FLAGS_group\n" in script.read_text()
    project.fake.reset_calls()

    new = "https://updates.example.test/v1/update/"
    _ok(project.build("--set", f"update.server={new}"))
    assert f"/usr/share/flatcar/update.conf: SERVER={new}\n" in _image(project)
    assert project.sdk_calls() == expected_calls()  # the image is rebuilt for the new server
    log = (project.work / "logs" / "update-server.log").read_text()
    assert f"SERVER={new} set in build/scripts/build_library/set_lsb_release" in log

    # The same server again: the edit is already there, nothing is rebuilt.
    project.fake.reset_calls()
    _ok(project.build("--set", f"update.server={new}"))
    assert project.sdk_calls() == []
    assert "already in" in (project.work / "logs" / "update-server.log").read_text()


@pytest.mark.slow
def test_a_set_lsb_release_without_the_update_conf_heredoc_stops_the_build(project: Project) -> None:
    # A flatcar/scripts that writes update.conf differently: fail loudly, never build with Flatcar's server.
    path = "build_library/set_lsb_release"
    script = project.fake.show(NEWEST_STABLE, path)
    project.fake.release(
        "stable-4593.2.6", {path: script.replace(b"flatcar/update.conf", b"flatcar/upd.conf")}
    )
    r = project.build()
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: step update-server failed with exit code 2 after 0:00:00: build/scripts/build_library/"
        "set_lsb_release: no heredoc writing /usr/share/flatcar/update.conf, cannot set update.server "
        "(log: build/logs/update-server.log)"
    ]
    assert project.sdk_calls() == []
    assert not project.out.exists()


@pytest.mark.slow
def test_from_after_a_config_change_reruns_the_cheap_steps_and_refuses_stale_sdk_steps(
    project: Project,
) -> None:
    _ok(project.build())
    changed = ("--set", "health_policy.runtime.failure_threshold=7")
    policy = project.scripts / OVERLAY / "app-admin" / "piccolod" / "files" / "health-policy.yaml"
    assert "failure_threshold: 7" not in policy.read_text()

    # The SDK steps were done for the old overlay: starting after them would build with a stale one.
    project.fake.reset_calls()
    r = project.build(*changed, "--from", "build-image-amd64-usr")
    assert r.returncode == 2, r.stdout + r.stderr
    # The first step done for the old overlay: the in-tree check of the packages that changed.
    assert (
        "error: cannot start at build-image-amd64-usr: step tree-check was done for other inputs" in r.stderr
    )
    hint = next(line for line in r.stderr.splitlines() if line.startswith("hint:"))
    assert hint.endswith("--from tree-check")
    assert project.sdk_calls() == []
    assert json.loads((project.out / "manifest.json").read_text())["config_sha256"] == config_digest(
        _cfg(**{"release.signing_key": project.key.email})
    )  # the old release is untouched

    # From the step the hint names: the overlay step runs again first, so the new policy is emerged,
    # and the manifest's config digest describes what was really built.
    _ok(project.build(*changed, "--from", "tree-check"))
    assert "failure_threshold: 7" in policy.read_text()
    assert project.sdk_calls() == expected_calls()
    manifest = json.loads((project.out / "manifest.json").read_text())
    cfg = _cfg(**{"release.signing_key": project.key.email, "health_policy.runtime.failure_threshold": "7"})
    assert manifest["config_sha256"] == config_digest(cfg)

    # Unchanged inputs: --from a later step is accepted and reruns only from there.
    project.fake.reset_calls()
    _ok(project.build(*changed, "--from", "build-image-amd64-usr"))
    assert project.sdk_calls() == expected_calls()[4:]


@pytest.mark.slow
def test_a_newly_pinned_tag_is_fetched_into_an_existing_checkout(project: Project) -> None:
    _ok(project.build("--set", f"flatcar.release={NEWEST_STABLE}"))
    project.fake.add_tag("stable-4593.2.6", "4593.0.0")
    r = project.build("--set", "flatcar.release=stable-4593.2.6")
    _ok(r)
    assert _git(project.scripts, "rev-parse", "HEAD") == project.fake.tag_commit("stable-4593.2.6")
    assert "git fetch --tags" in (project.work / "logs" / "clone.log").read_text()

    # Rebuilding a pinned tag that is already there fetches nothing (works without the remote).
    gone = project.fake.upstream.with_name("upstream-gone")
    project.fake.upstream.rename(gone)
    try:
        _ok(project.build("--set", "flatcar.release=stable-4593.2.6"))
        assert "tag stable-4593.2.6 is already in" in (project.work / "logs" / "clone.log").read_text()
    finally:
        gone.rename(project.fake.upstream)


@pytest.mark.slow
def test_require_signature_fails_before_anything_when_no_key_is_set(project: Project) -> None:
    r = project.build("--require-signature", signed=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "<== [1/17] preflight FAILED (exit code 2)" in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --require-signature: release.signing_key is not set, the release would be unsigned"
    ]
    assert not project.scripts.exists()  # not even cloned
    _ok(project.build("--require-signature", "--to", "clone"))


@pytest.mark.slow
def test_an_empty_signing_key_variable_is_an_error_not_an_unsigned_release(project: Project) -> None:
    args = ["build", "--config", str(DEFAULT_CONFIG), "--scripts-url", str(project.fake.upstream)]
    r = cli(*args, "--no-sdk-image-check", cwd=project.root, env={"PICCOLO_RELEASE_SIGNING_KEY": ""})
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: environment $PICCOLO_RELEASE_SIGNING_KEY: release.signing_key: empty")
    assert not project.work.joinpath("scripts").exists()


@pytest.mark.slow
@pytest.mark.parametrize("output", [".", "build", "/", "notes"])
def test_an_output_dir_that_is_not_a_release_fails_before_anything_starts(
    project: Project, output: str
) -> None:
    (project.root / "notes").mkdir()
    (project.root / "notes" / "todo.txt").write_text("not a release\n")
    r = project.build("--set", f"release.output_dir={output}", signed=False)
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert [e.split(":")[0] for e in errors] == ["error", "hint"], r.stderr
    assert errors[0].startswith(f"error: release.output_dir: {output} "), r.stderr
    assert not project.scripts.exists()  # not even cloned
    assert (project.root / "notes" / "todo.txt").read_text() == "not a release\n"
    assert project.sdk_calls() == []
