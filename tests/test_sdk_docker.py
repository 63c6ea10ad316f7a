"""The Docker path: the SDK image check against a real, private dockerd (no registry is reachable).

A locally imported busybox image, tagged with the SDK image's name, stands in for
``ghcr.io/flatcar/flatcar-sdk-all:<version>``. Pulls are only ever tried from 127.0.0.1 (a closed port),
never from a public registry. Both ways of naming the SDK are covered: ``flatcar.sdk_version`` (checked
in preflight, before the clone) and, when it is not set, ``FLATCAR_SDK_VERSION`` of the checked-out
tag's version.txt (checked right after the checkout); either way a missing image stops the build
before any SDK step.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolo_build.docker_sdk import ensure_image
from piccolo_build.errors import PiccoloError
from tests.builder_helpers import DEFAULT_CONFIG, cli
from tests.fixtures.daemons import BUSYBOX_IMAGE, Dockerd
from tests.fixtures.fakesdk import FakeSdk, seed_distfiles

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

SDK_REPO = "ghcr.io/flatcar/flatcar-sdk-all"


def _unique_version() -> str:
    return f"4593.1.{uuid.uuid4().int % 100000}+test"


@contextlib.contextmanager
def sdk_image(dockerd: Dockerd, version: str) -> Iterator[str]:
    """The image of SDK ``version`` in the private dockerd (busybox under the SDK's name)."""
    tag = version.replace("+", "-")
    client = dockerd.client()
    try:
        client.images.get(BUSYBOX_IMAGE).tag(SDK_REPO, tag)
        yield f"{SDK_REPO}:{tag}"
    finally:
        client.images.remove(f"{SDK_REPO}:{tag}")
        client.close()


@pytest.fixture
def sdk_version(dockerd: Dockerd) -> Iterator[str]:
    """A unique SDK version whose image exists in the private dockerd."""
    version = _unique_version()
    with sdk_image(dockerd, version):
        yield version


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_present_image_is_found(dockerd: Dockerd, sdk_version: str) -> None:
    name = f"{SDK_REPO}:{sdk_version.replace('+', '-')}"
    info = ensure_image(name, base_url=dockerd.host)
    client = dockerd.client()
    try:
        assert info.id == client.images.get(BUSYBOX_IMAGE).id
    finally:
        client.close()
    assert info.pulled is False


def test_an_absent_image_is_reported_with_the_command_that_fixes_it(dockerd: Dockerd) -> None:
    with pytest.raises(
        PiccoloError, match=r"the SDK image ghcr\.io/flatcar/flatcar-sdk-all:0\.0\.0 is not present"
    ) as e:
        ensure_image(f"{SDK_REPO}:0.0.0", base_url=dockerd.host)
    assert e.value.hint == f"docker pull {SDK_REPO}:0.0.0, or run with --pull"


def test_a_refused_pull_is_one_clear_error(dockerd: Dockerd) -> None:
    name = f"127.0.0.1:{_closed_port()}/flatcar-sdk-all:0.0.0"
    with pytest.raises(PiccoloError, match=rf"cannot pull the SDK image {name}"):
        ensure_image(name, pull=True, base_url=dockerd.host)


def test_no_daemon_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PiccoloError, match="cannot reach the Docker daemon"):
        ensure_image(f"{SDK_REPO}:1.0.0", base_url=f"unix://{tmp_path}/no.sock")


@pytest.fixture
def root(tmp_path: Path, locked_distfiles: Path) -> Iterator[Path]:
    """A project directory whose build/distfiles holds the locked sdists (nothing is downloaded)."""
    seed_distfiles(locked_distfiles, tmp_path / "build")
    yield tmp_path
    shutil.rmtree(tmp_path / "build" / "scripts", ignore_errors=True)  # a real tree: about 100 MB


def _build(root: Path, fake: FakeSdk, dockerd: Dockerd, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "build",
        "--config",
        DEFAULT_CONFIG,
        "--scripts-url",
        fake.upstream,
        *extra,
        cwd=root,
        env={"DOCKER_HOST": dockerd.host},
    )


def test_build_checks_the_sdk_image_first_and_passes_the_version(
    root: Path, fakesdk: FakeSdk, dockerd: Dockerd, sdk_version: str
) -> None:
    r = _build(root, fakesdk, dockerd, "--set", f"flatcar.sdk_version={sdk_version}")
    assert r.returncode == 0, r.stdout + r.stderr
    image = f"{SDK_REPO}:{sdk_version.replace('+', '-')}"
    log = (root / "build" / "logs" / "preflight.log").read_text()
    assert f"SDK image {image} present: sha256:" in log
    check = (root / "build" / "logs" / "sdk-image.log").read_text()
    assert f"the checkout pins SDK 4593.0.0; building with flatcar.sdk_version {sdk_version}" in check
    assert f"SDK image {image} present: sha256:" in check
    sdk_calls = [c for c in fakesdk.calls() if c[0] == "run_sdk_container"]
    assert len(sdk_calls) == 4
    assert all(c[1:5] == ["-V", sdk_version, "-a", "all"] for c in sdk_calls)
    packages = (root / "build" / "logs" / "build-packages-amd64-usr.log").read_text()
    assert f"fake run_sdk_container: SDK {sdk_version}, image {image}\n" in packages


def test_build_with_a_custom_sdk_image_uses_dash_c(
    root: Path, fakesdk: FakeSdk, dockerd: Dockerd, sdk_version: str
) -> None:
    tag = sdk_version.replace("+", "-")
    client = dockerd.client()
    try:
        client.images.get(BUSYBOX_IMAGE).tag("registry.piccolo.test/sdk", tag)
        r = _build(
            root,
            fakesdk,
            dockerd,
            "--set",
            f"flatcar.sdk_version={sdk_version}",
            "--sdk-image",
            "registry.piccolo.test/sdk",
            "--to",
            "build-packages-amd64-usr",
        )
    finally:
        client.images.remove(f"registry.piccolo.test/sdk:{tag}")
        client.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert fakesdk.calls()[0][1:5] == ["-C", f"registry.piccolo.test/sdk:{tag}", "-V", sdk_version]


def test_a_missing_sdk_image_fails_the_build_before_any_long_step(
    root: Path, fakesdk: FakeSdk, dockerd: Dockerd
) -> None:
    r = _build(root, fakesdk, dockerd, "--set", "flatcar.sdk_version=1.2.3")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: the SDK image {SDK_REPO}:1.2.3 is not present locally" in r.stderr
    assert f"hint: docker pull {SDK_REPO}:1.2.3, or run with --pull" in r.stderr
    assert not (root / "build" / "scripts").exists()
    assert fakesdk.calls() == []


def test_without_a_configured_version_the_checkout_names_the_sdk_image(
    root: Path, fakesdk: FakeSdk, dockerd: Dockerd, sdk_version: str
) -> None:
    fakesdk.add_tag("stable-4593.2.6", sdk_version)  # the newest stable tag pins this SDK
    r = _build(root, fakesdk, dockerd)
    assert r.returncode == 0, r.stdout + r.stderr
    image = f"{SDK_REPO}:{sdk_version.replace('+', '-')}"
    logs = root / "build" / "logs"
    assert "SDK image" not in (logs / "preflight.log").read_text()  # not known before the checkout
    check = (logs / "sdk-image.log").read_text()
    version_file = "build/scripts/sdk_container/.repo/manifests/version.txt"
    assert f"SDK version {sdk_version}: FLATCAR_SDK_VERSION in {version_file}\n" in check
    assert f"SDK image {image} present: sha256:" in check
    # No -V: run_sdk_container reads the same file, and runs the very image that was checked.
    sdk_calls = [c for c in fakesdk.calls() if c[0] == "run_sdk_container"]
    assert len(sdk_calls) == 4
    assert all(c[1:4] == ["-a", "all", "--"] for c in sdk_calls)
    assert (
        f"fake run_sdk_container: SDK {sdk_version}, image {image}\n"
        in (logs / "build-packages-amd64-usr.log").read_text()
    )
    manifest = json.loads((root / "release" / "manifest.json").read_text())
    assert (manifest["flatcar_tag"], manifest["sdk_version"]) == ("stable-4593.2.6", sdk_version)


def test_an_sdk_image_missing_for_the_checkouts_version_fails_before_any_sdk_step(
    root: Path, fakesdk: FakeSdk, dockerd: Dockerd
) -> None:
    version = _unique_version()
    tag = version.replace("+", "-")
    fakesdk.add_tag("stable-4593.2.6", version)
    r = _build(root, fakesdk, dockerd)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: the SDK image {SDK_REPO}:{tag} is not present locally" in r.stderr
    assert f"hint: docker pull {SDK_REPO}:{tag}, or run with --pull" in r.stderr
    scripts = root / "build" / "scripts"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=scripts, capture_output=True, text=True, check=True
    )
    assert head.stdout.strip() == fakesdk.tag_commit("stable-4593.2.6")  # checked out, then stopped
    assert not (scripts / "sdk_container/src/third_party/coreos-overlay/app-admin/piccolod").exists()
    assert fakesdk.calls() == []


def test_resuming_checks_the_sdk_image_again(root: Path, fakesdk: FakeSdk, dockerd: Dockerd) -> None:
    version = _unique_version()
    fakesdk.add_tag("stable-4593.2.6", version)
    with sdk_image(dockerd, version) as image:
        r = _build(root, fakesdk, dockerd)
        assert r.returncode == 0, r.stdout + r.stderr
    # The image is gone (pruned, say): a resumed build stops before its first SDK step.
    fakesdk.reset_calls()
    r = _build(root, fakesdk, dockerd, "--from", "build-image-amd64-usr")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: the SDK image {image} is not present locally" in r.stderr
    assert fakesdk.calls() == []
