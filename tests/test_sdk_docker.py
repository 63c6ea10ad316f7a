"""The Docker path: the SDK image check against a real, private dockerd (no registry is reachable).

A locally imported busybox image, tagged with the SDK image's name, stands in for
``ghcr.io/flatcar/flatcar-sdk-all:<version>``. Pulls are only ever tried from 127.0.0.1 (a closed port),
never from a public registry.
"""

from __future__ import annotations

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
from tests.fixtures.fakesdk import FakeSdk

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

SDK_REPO = "ghcr.io/flatcar/flatcar-sdk-all"


@pytest.fixture
def sdk_version(dockerd: Dockerd) -> Iterator[str]:
    """A unique SDK version whose image exists in the private dockerd (busybox under the SDK's name)."""
    version = f"4081.1.{uuid.uuid4().int % 100000}+test"
    tag = version.replace("+", "-")
    client = dockerd.client()
    try:
        client.images.get(BUSYBOX_IMAGE).tag(SDK_REPO, tag)
        yield version
    finally:
        client.images.remove(f"{SDK_REPO}:{tag}")
        client.close()


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
    tmp_path: Path, fakesdk: FakeSdk, dockerd: Dockerd, sdk_version: str
) -> None:
    r = _build(tmp_path, fakesdk, dockerd, "--set", f"flatcar.sdk_version={sdk_version}")
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "build" / "logs" / "preflight.log").read_text()
    assert f"SDK image {SDK_REPO}:{sdk_version.replace('+', '-')} present: sha256:" in log
    sdk_calls = [c for c in fakesdk.calls() if c[0] == "run_sdk_container"]
    assert len(sdk_calls) == 4
    assert all(c[1:5] == ["-V", sdk_version, "-a", "all"] for c in sdk_calls)


def test_build_with_a_custom_sdk_image_uses_dash_c(
    tmp_path: Path, fakesdk: FakeSdk, dockerd: Dockerd, sdk_version: str
) -> None:
    tag = sdk_version.replace("+", "-")
    client = dockerd.client()
    try:
        client.images.get(BUSYBOX_IMAGE).tag("registry.piccolo.test/sdk", tag)
        r = _build(
            tmp_path,
            fakesdk,
            dockerd,
            "--set",
            f"flatcar.sdk_version={sdk_version}",
            "--sdk-image",
            "registry.piccolo.test/sdk",
            "--to",
            "sdk-emerge-amd64-usr",
        )
    finally:
        client.images.remove(f"registry.piccolo.test/sdk:{tag}")
        client.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert fakesdk.calls()[0][1:5] == ["-C", f"registry.piccolo.test/sdk:{tag}", "-V", sdk_version]


def test_a_missing_sdk_image_fails_the_build_before_any_long_step(
    tmp_path: Path, fakesdk: FakeSdk, dockerd: Dockerd
) -> None:
    r = _build(tmp_path, fakesdk, dockerd, "--set", "flatcar.sdk_version=1.2.3")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: the SDK image {SDK_REPO}:1.2.3 is not present locally" in r.stderr
    assert f"hint: docker pull {SDK_REPO}:1.2.3, or run with --pull" in r.stderr
    assert not (tmp_path / "build" / "scripts").exists()
    assert fakesdk.calls() == []
