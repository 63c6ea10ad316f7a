"""``piccolo_build.plan`` and ``piccolo-build plan``: the exact ordered steps, computed without running."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piccolo_build.config import BuildConfig, load_config
from piccolo_build.context import BuildContext
from piccolo_build.errors import PiccoloError
from piccolo_build.plan import Action, Facts, plan, sdk_command
from piccolo_build.releases import newest, version
from piccolo_build.versionfile import read_sdk_version
from tests.builder_helpers import cli

ROOT = Path(__file__).resolve().parent.parent
FACTS = Facts(
    sysext_name="piccolod",
    sysext_packages=("dev-lang/python", "app-admin/piccolod"),
    rdepend_atom="coreos-base/piccolo-base",
    agent_atom="app-admin/piccolod",
    distfiles=("pyyaml-6.0.4.tar.gz", "docker-7.2.0.tar.gz"),
)


def _cfg(**overrides: str) -> BuildConfig:
    return load_config(ROOT / "piccolo.yaml", overrides=overrides)


def test_default_plan_order_and_commands() -> None:
    steps = plan(_cfg(), BuildContext(), FACTS)
    assert [s.name for s in steps] == [
        "preflight",
        "clone",
        "checkout",
        "sdk-image",  # after the checkout: the tag's version.txt names the SDK
        "overlay",
        "tree-check",  # pkgcheck inside the checkout's real repositories, before any SDK step
        "bundle",
        "distfiles",
        "update-key",  # without release.update_key: the tag's own coreos-au-key (development key)
        "coreos-rdepend",
        "update-server",  # build_image's set_lsb_release writes our SERVER= into update.conf
        "build-packages-amd64-usr",
        "sysext-packages-amd64-usr",
        "build-image-amd64-usr",
        "image-to-vm-amd64-usr",
        "collect",
        "verify",  # no signing key in the default config: nothing to sign
    ]
    by = {s.name: s for s in steps}
    sdk = ("./run_sdk_container", "-a", "all", "--")
    assert by["sysext-packages-amd64-usr"].argv == (
        *sdk,
        "emerge-amd64-usr",
        "--usepkg",
        "--getbinpkg",
        "--with-bdeps=y",
        "--buildpkg",
        "--verbose",
        "dev-lang/python",
        "app-admin/piccolod",
    )
    assert by["build-packages-amd64-usr"].argv == (*sdk, "./build_packages", "--board=amd64-usr")
    assert by["build-image-amd64-usr"].argv == (
        *sdk,
        "./build_image",
        "--board=amd64-usr",
        "--group=stable",
        "--base_sysexts=piccolod<separator>dev-lang/python&app-admin/piccolod,<build_image's default list>",
        "--replace",
        "<oem_sysext flags and image types read from the checkout>",
    )
    assert by["image-to-vm-amd64-usr"].argv == (
        *sdk,
        "./image_to_vm.sh",
        "--from=/mnt/host/source/src/build/images/amd64-usr/latest",
        "--board=amd64-usr",
        "--format=qemu_uefi",
        "--image_compression_formats=none",
    )
    for s in steps:
        if s.action is Action.COMMAND:
            assert s.cwd == Path("build/scripts")
            assert "iso" not in " ".join(s.argv)


def test_boards_sdk_version_group_and_signing_change_the_plan() -> None:
    cfg = _cfg(
        boards="amd64-usr,arm64-usr",
        **{
            "flatcar.sdk_version": "4230.1.0+nightly",
            "update.group": "beta",
            "release.signing_key": "A1B2C3D4",
        },
    )
    steps = plan(cfg, BuildContext(work_dir=Path("/w")), FACTS)
    names = [s.name for s in steps]
    assert names[11:19] == [
        f"{kind}-{board}"
        for board in ("amd64-usr", "arm64-usr")
        for kind in ("build-packages", "sysext-packages", "build-image", "image-to-vm")
    ]
    assert names[-3:] == ["collect", "sign", "verify"]
    image = next(s for s in steps if s.name == "build-image-arm64-usr")
    assert image.argv[:6] == ("./run_sdk_container", "-V", "4230.1.0+nightly", "-a", "all", "--")
    assert "--group=beta" in image.argv and "--board=arm64-usr" in image.argv
    assert image.board == "arm64-usr"
    sign = next(s for s in steps if s.name == "sign")
    assert sign.argv[-2:] == ("--local-user", "A1B2C3D4")


def test_the_sdk_image_step_names_the_version_or_the_checkout_file() -> None:
    by = {s.name: s for s in plan(_cfg(), BuildContext(), FACTS)}
    check = by["sdk-image"]
    assert check.action is Action.SDK_IMAGE and check.always
    assert check.inputs == ("build/scripts/sdk_container/.repo/manifests/version.txt",)
    assert "read FLATCAR_SDK_VERSION from build/scripts/sdk_container/.repo/manifests/version.txt" in (
        check.description
    )
    assert "SDK image" not in by["preflight"].description  # unknown before the checkout

    pinned = {s.name: s for s in plan(_cfg(**{"flatcar.sdk_version": "4081.1.0"}), BuildContext(), FACTS)}
    assert pinned["sdk-image"].inputs == ("4081.1.0",)
    assert "ghcr.io/flatcar/flatcar-sdk-all:4081.1.0" in pinned["sdk-image"].description
    assert "ghcr.io/flatcar/flatcar-sdk-all:4081.1.0" in pinned["preflight"].description


def test_the_distfiles_step_lists_every_locked_file_in_cache_and_distdir() -> None:
    by = {s.name: s for s in plan(_cfg(), BuildContext(), FACTS)}
    step = by["distfiles"]
    assert step.action is Action.DISTFILES and step.always
    assert step.inputs == (
        "piccolo.lock.json",
        "build/distfiles/pyyaml-6.0.4.tar.gz",
        "build/distfiles/docker-7.2.0.tar.gz",
    )
    assert step.outputs == (
        "build/scripts/sdk_container/.cache/distfiles/pyyaml-6.0.4.tar.gz",
        "build/scripts/sdk_container/.cache/distfiles/docker-7.2.0.tar.gz",
    )
    names = [s.name for s in plan(_cfg(), BuildContext(), FACTS)]
    assert names.index("distfiles") < names.index("build-packages-amd64-usr")


def test_a_custom_sdk_image_without_a_version_is_refused() -> None:
    # -C takes a whole image name; without flatcar.sdk_version its tag is unknown until the checkout.
    with pytest.raises(ValueError, match=r"registry\.example\.invalid/sdk needs flatcar\.sdk_version"):
        plan(_cfg(), BuildContext(sdk_image_repo="registry.example.invalid/sdk"), FACTS)


def test_custom_sdk_image_is_passed_with_dash_c() -> None:
    cfg = _cfg(**{"flatcar.sdk_version": "4230.1.0+nightly"})
    ctx = BuildContext(sdk_image_repo="registry.example.invalid/sdk")
    argv = sdk_command(cfg, ctx, "./build_packages", "--board=amd64-usr")
    # Docker tags cannot hold '+': flatcar/scripts turns it into '-', so do we.
    assert argv[:5] == (
        "./run_sdk_container",
        "-C",
        "registry.example.invalid/sdk:4230.1.0-nightly",
        "-V",
        "4230.1.0+nightly",
    )


@pytest.mark.parametrize("bad", ['a"b', "a$b", "a`b", "a\\b", "a\nb"])
def test_sdk_arguments_that_the_entry_script_would_expand_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot pass through run_sdk_container"):
        sdk_command(_cfg(), BuildContext(), "./build_image", f"--group={bad}")


def test_pinned_release_is_checked_out_by_name() -> None:
    steps = plan(_cfg(**{"flatcar.release": "stable-4081.2.0"}), BuildContext(), FACTS)
    by = {s.name: s for s in steps}
    assert by["checkout"].argv[-1] == "stable-4081.2.0"
    # The clone step always runs: it fetches when a newly pinned tag is missing from the checkout.
    assert by["clone"].always
    assert "only when stable-4081.2.0 is missing locally" in by["clone"].description
    floating = {s.name: s for s in plan(_cfg(), BuildContext(), FACTS)}
    assert floating["clone"].always


def test_the_update_server_step_carries_the_configured_server() -> None:
    server = "https://updates.example.test/v1/update/"
    by = {s.name: s for s in plan(_cfg(**{"update.server": server}), BuildContext(), FACTS)}
    step = by["update-server"]
    assert step.inputs == (server,)
    assert step.outputs == ("build/scripts/build_library/set_lsb_release",)
    assert f"SERVER={server}" in step.description
    assert step.always


def test_newest_uses_version_order_not_string_order() -> None:
    tags = ["stable-999.0.0", "stable-4081.2.9", "stable-4081.2.10", "beta-9999.0.0", "stable-4081.2.10-rc1"]
    assert newest("stable", tags) == "stable-4081.2.10"
    assert newest("beta", tags) == "beta-9999.0.0"
    assert newest("stable", ["alpha-1.2.3", "main"]) is None


@given(st.lists(st.tuples(st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99)), min_size=1))
def test_newest_is_the_maximum_version(versions: list[tuple[int, int, int]]) -> None:
    tags = [f"stable-{a}.{b}.{c}" for a, b, c in versions] + ["beta-99999.0.0", "lts-99999.1.1"]
    found = newest("stable", tags)
    assert found is not None
    assert version(found) == max(versions)


def test_step_json_is_complete_and_serialisable() -> None:
    for step in plan(_cfg(), BuildContext(), FACTS):
        data = json.loads(json.dumps(step.to_json()))
        assert set(data) == {
            "name",
            "description",
            "action",
            "argv",
            "cwd",
            "env",
            "inputs",
            "outputs",
            "board",
            "always",
        }


# --- the command -------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    r = cli(*args, cwd=cwd)
    return r.returncode, r.stdout + r.stderr


def test_plan_command_prints_the_full_default_build_and_runs_nothing(tmp_path: Path) -> None:
    code, out = _cli("plan", "--config", str(ROOT / "piccolo.yaml"), cwd=tmp_path)
    assert code == 0, out
    numbered = re.findall(r"^\s*(\d+)\. (\S+) ", out, flags=re.M)
    assert [int(i) for i, _ in numbered] == list(range(1, 18))
    assert [n for _, n in numbered] == [s.name for s in plan(_cfg(), BuildContext(), FACTS)]
    assert "$ ./run_sdk_container -a all -- ./build_image --board=amd64-usr --group=stable" in out
    assert "piccolod<separator>dev-lang/python&" in out  # our sysext entry, in the tree's syntax
    assert "--format=qemu_uefi" in out
    assert list(tmp_path.iterdir()) == []  # nothing cloned, rendered or written
    assert "read from the checkout once there is one:" in out
    assert out.startswith(
        "SDK version: from checkout (build/scripts/sdk_container/.repo/manifests/version.txt); "
        "image ghcr.io/flatcar/flatcar-sdk-all:<FLATCAR_SDK_VERSION of the checkout>\n"
    )


def test_plan_shows_a_configured_sdk_version_and_its_image(tmp_path: Path) -> None:
    code, out = _cli(
        "plan",
        "--config",
        str(ROOT / "piccolo.yaml"),
        "--set",
        "flatcar.sdk_version=4230.1.0+nightly",
        cwd=tmp_path,
    )
    assert code == 0, out
    assert out.splitlines()[0] == (
        "SDK version: 4230.1.0+nightly (flatcar.sdk_version); "
        "image ghcr.io/flatcar/flatcar-sdk-all:4230.1.0-nightly"
    )
    code, out = _cli(
        "plan", "--config", str(ROOT / "piccolo.yaml"), "--sdk-image", "registry.example.invalid/sdk"
    )
    assert code == 2
    assert (
        "error: cannot plan the build: the SDK image registry.example.invalid/sdk needs flatcar.sdk_version"
        in out
    )


def test_plan_json_matches_the_library(tmp_path: Path) -> None:
    code, out = _cli(
        "plan", "--config", str(ROOT / "piccolo.yaml"), "--json", "--set", "boards=arm64-usr", cwd=tmp_path
    )
    assert code == 0, out
    doc = json.loads(out)
    assert {"GNUPGHOME", "DOCKER_HOST", "PATH", "https_proxy", "NO_PROXY"} <= set(
        doc["environment"]["passthrough"]
    )
    assert doc["sdk"] == {
        "version": "from checkout",
        "source": "build/scripts/sdk_container/.repo/manifests/version.txt",
        "image": "ghcr.io/flatcar/flatcar-sdk-all:<FLATCAR_SDK_VERSION of the checkout>",
    }
    steps = doc["steps"]
    assert [s["name"] for s in steps if s["board"]] == [
        "build-packages-arm64-usr",
        "sysext-packages-arm64-usr",
        "build-image-arm64-usr",
        "image-to-vm-arm64-usr",
    ]
    assert steps[11]["name"] == "build-packages-arm64-usr"
    assert steps[11]["argv"][0] == "./run_sdk_container"
    assert steps[11]["cwd"] == "build/scripts"
    distfiles = next(s for s in steps if s["name"] == "distfiles")
    assert "build/distfiles/pyyaml-6.0.4.tar.gz" in distfiles["inputs"]


def test_plan_with_a_bad_config_value_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("version: 0.1.0\nflatcar:\n  release: nightly\n")
    code, out = _cli("plan", "--config", str(cfg))
    assert code != 0
    assert f"{cfg}:3: flatcar.release" in out


# --- the SDK version a checkout pins -----------------------------------------------------------


def test_the_sdk_version_is_read_from_version_txt_as_flatcar_writes_it(tmp_path: Path) -> None:
    vf = tmp_path / "version.txt"
    vf.write_text(
        "FLATCAR_VERSION=4230.0.0+nightly-20250101-2100\nFLATCAR_VERSION_ID=4230.0.0\n"
        'FLATCAR_BUILD_ID="nightly-20250101-2100"\nFLATCAR_SDK_VERSION=4230.0.0+nightly-20241231-2100\n'
    )
    assert read_sdk_version(vf) == "4230.0.0+nightly-20241231-2100"
    vf.write_text('FLATCAR_VERSION=4081.2.10\nFLATCAR_SDK_VERSION="4081.1.0"\n')
    assert read_sdk_version(vf) == "4081.1.0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FLATCAR_VERSION=4081.2.10\n", r"version\.txt: FLATCAR_SDK_VERSION: not set$"),
        (
            "FLATCAR_VERSION=1.2.3\nFLATCAR_SDK_VERSION=$(id)\n",
            r"version\.txt:2: FLATCAR_SDK_VERSION: '\$\(id\)'",
        ),
        ("FLATCAR_SDK_VERSION=\n", r"version\.txt:1: FLATCAR_SDK_VERSION: '' is not a version"),
    ],
)
def test_a_bad_version_txt_is_one_line_naming_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    vf = tmp_path / "version.txt"
    vf.write_text(text)
    with pytest.raises(PiccoloError, match=message) as e:
        read_sdk_version(vf)
    assert "\n" not in e.value.message and str(vf) in e.value.message


def test_a_missing_version_txt_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(PiccoloError, match=r"version\.txt: cannot read the checkout's version file") as e:
        read_sdk_version(tmp_path / "version.txt")
    assert e.value.hint == "is the scripts checkout flatcar/scripts? or set flatcar.sdk_version"
