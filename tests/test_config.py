"""piccolo_build.config: the model of piccolo.yaml, its checks and the precedence of its sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from piccolo_build import config as c
from piccolo_build.config import Board, BuildConfig, load_config
from piccolod.model import ModelError, default, json_schema, to_plain
from piccolod.policy import Component, HealthPolicy, PolicyFile, load_policy
from tests.builder_helpers import DEFAULT_CONFIG, cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "piccolo.yaml"
    path.write_text(text)
    return path


def test_committed_file_is_the_defaults() -> None:
    assert load_config(DEFAULT_CONFIG) == default(BuildConfig)
    assert load_config(None) == default(BuildConfig)


def test_policy_is_piccolods_model() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert isinstance(cfg.policy(), PolicyFile)
    assert cfg.policy().health_policy == HealthPolicy()
    assert Component.TPM in cfg.health_policy.startup.required_components


def test_contract_key_names() -> None:
    plain = to_plain(default(BuildConfig))
    assert list(plain) == [
        "version",
        "boards",
        "flatcar",
        "update",
        "package",
        "release",
        "monitoring",
        "health_policy",
        "agent",
    ]
    assert set(plain["monitoring"]) == {
        "selector",
        "runbook_url",
        "dashboard_uid",
        "dashboard_title",
        "thresholds",
    }
    assert set(plain["flatcar"]) == {"release", "releases", "sdk_version"}
    assert set(plain["update"]) == {"group", "server"}
    assert set(plain["package"]) == {"category", "name", "license"}
    assert set(plain["release"]) == {"signing_key", "update_key", "output_dir"}


def test_schema_rejects_extra_keys_and_lists_boards() -> None:
    schema = json_schema(BuildConfig, "piccolo.yaml")
    assert schema["additionalProperties"] is False
    assert schema["properties"]["boards"]["items"] == {"enum": ["amd64-usr", "arm64-usr"]}
    assert schema["properties"]["flatcar"]["properties"]["release"]["default"] == "stable"


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "update:\n  group: from-file\n  server: https://file.example/\nversion: 2.0.0\n")
    assert load_config(path).update.group == "from-file"
    env = {"PICCOLO_UPDATE_GROUP": "from-env", "PICCOLO_VERSION": "3.0.0", "PICCOLO_UNRELATED": "ignored"}
    cfg = load_config(path, env=env)
    assert (cfg.update.group, cfg.version, cfg.update.server) == (
        "from-env",
        "3.0.0",
        "https://file.example/",
    )
    cfg = load_config(path, env=env, overrides={"update.group": "from-flag"})
    assert (cfg.update.group, cfg.version) == ("from-flag", "3.0.0")


def test_env_lists_numbers_and_null(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        env={
            "PICCOLO_BOARDS": "amd64-usr, arm64-usr",
            "PICCOLO_HEALTH_POLICY_STARTUP_TIMEOUT_SECONDS": "45",
            "PICCOLO_HEALTH_POLICY_ROLLBACK_ENABLE_AUTOMATIC": "false",
            "PICCOLO_FLATCAR_SDK_VERSION": "4230.2.3",
        },
        overrides={"release.signing_key": "null", "version": "1.0"},
    )
    assert cfg.boards == (Board.AMD64, Board.ARM64)
    assert cfg.health_policy.startup.timeout_seconds == 45.0
    assert cfg.health_policy.rollback.enable_automatic is False
    assert cfg.flatcar.sdk_version == "4230.2.3"
    assert cfg.release.signing_key is None
    assert cfg.version == "1.0"  # a string key stays a string, never the float 1.0


def test_env_names() -> None:
    assert c.env_name(("flatcar", "release")) == "PICCOLO_FLATCAR_RELEASE"
    assert c.env_name(("boards",)) == "PICCOLO_BOARDS"


def test_errors_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as exc:
        load_config(None, env={"PICCOLO_BOARDS": "x86"})
    assert (
        str(exc.value)
        == "environment $PICCOLO_BOARDS: boards[0]: must be one of amd64-usr, arm64-usr; got 'x86'"
    )
    with pytest.raises(ModelError) as exc:
        load_config(None, overrides={"no.such": "1"})
    assert str(exc.value).startswith("command line: no.such: unknown key")
    path = write(tmp_path, "version: 0.1.0\nupdate:\n  group: 'a b'\n")
    with pytest.raises(ModelError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}:3: update.group: not a valid name")


def test_a_list_item_from_the_environment_is_blamed_on_it(tmp_path: Path) -> None:
    path = write(tmp_path, "boards: [amd64-usr]\n")
    with pytest.raises(ModelError) as exc:
        load_config(path, env={"PICCOLO_BOARDS": "amd64-usr,arm"})
    assert str(exc.value).startswith("environment $PICCOLO_BOARDS: boards[1]:")


@pytest.mark.parametrize("key", ["release.signing_key", "flatcar.sdk_version", "boards", "version"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_value_from_the_environment_or_a_flag_is_an_error(key: str, value: str) -> None:
    with pytest.raises(ModelError) as exc:
        load_config(None, env={c.env_name(tuple(key.split("."))): value})
    assert str(exc.value) == (
        f"environment ${c.env_name(tuple(key.split('.')))}: {key}: "
        "empty value; give a value, or 'null' where null is allowed"
    )
    with pytest.raises(ModelError) as exc:
        load_config(None, overrides={key: value})
    assert str(exc.value).startswith(f"command line: {key}: empty value")


def test_null_still_says_null() -> None:
    cfg = load_config(None, env={"PICCOLO_RELEASE_SIGNING_KEY": "null"})
    assert cfg.release.signing_key is None


@pytest.mark.parametrize("value", ["0.1.0", "1", "1.2.3_rc1", "2.0b", "1.0_p20260101", "1.2-r3"])
def test_good_versions(value: str) -> None:
    assert c.gentoo_version(value) == value


@pytest.mark.parametrize("value", ["", "v1.0", "1.0-beta", "1..0", "1.0 ", "1.0$(id)", "1.0\n"])
def test_bad_versions(value: str) -> None:
    with pytest.raises(ValueError, match="not"):
        c.gentoo_version(value)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (c.gentoo_package, "foo-1.0"),
        (c.gentoo_package, "-foo"),
        (c.gentoo_package, "a/b"),
        (c.gentoo_category, "../etc"),
        (c.gentoo_category, "app admin"),
        (c.license_token, "MIT GPL-2"),
        (c.license_token, "MIT;id"),
        (c.token, "-stable"),
        (c.flatcar_release, "nightly"),
        (c.flatcar_release, "stable-4230"),
        (c.flatcar_release, "Stable"),
        (c.flatcar_release, "beta-4757.1.0-rc1"),
        (c.update_url, "ftp://x/"),
        (c.update_url, "https:///path"),
        (c.update_url, "https://x/?a=1"),
        (c.update_url, "https://x/;reboot"),
        (c.update_url, "https://x/~me"),
        (c.signing_key, "--homedir"),
        (c.output_dir, "../up"),
    ],
)
def test_checks_reject(check: object, value: str) -> None:
    assert callable(check)
    with pytest.raises(ValueError):
        check(value)


@pytest.mark.parametrize(
    "value", ["lts", "stable", "beta", "alpha", "lts-4081.3.10", "stable-4593.2.5", "alpha-4790.0.0"]
)
def test_every_channel_and_pinned_tag_is_a_release(value: str) -> None:
    assert c.flatcar_release(value) == value


def test_licence_freedom() -> None:
    assert c.Package().license_is_free
    assert not c.Package(license="Piccolo-EULA").license_is_free


def test_board_arch() -> None:
    assert [b.arch for b in Board] == ["amd64", "arm64"]


def test_injection_anywhere_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "health_policy:\n  rollback:\n    reboot_command: [systemctl, '`reboot`']\n")
    with pytest.raises(ModelError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}:3: health_policy.rollback.reboot_command[1]:")


@pytest.mark.parametrize(
    "state_dir",
    [
        "/",
        "//",
        "/etc",
        "/var/lib",
        "/var/lib/",
        "/var/lib/.",
        "/var/lib/a/b",
        "/usr/lib/piccolod",
        "/var/lib/a b",
    ],
)
def test_the_builder_wants_a_state_dir_under_var_lib(tmp_path: Path, state_dir: str) -> None:
    path = write(tmp_path, f"version: 0.1.0\nagent:\n  listen: 127.0.0.1:8080\n  state_dir: '{state_dir}'\n")
    with pytest.raises(ModelError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}:4: agent.state_dir: ")
    with pytest.raises(ModelError, match=r"^command line: agent\.state_dir: "):
        load_config(None, overrides={"agent.state_dir": state_dir})


@pytest.mark.parametrize("state_dir", ["/var/lib/piccolod", "/var/lib/piccolo-2.state_x"])
def test_good_state_dirs(state_dir: str) -> None:
    assert load_config(None, overrides={"agent.state_dir": state_dir}).agent.state_dir == state_dir


def test_a_bad_state_dir_fails_render_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  state_dir: /etc\n")
    r = cli("render", "-c", path, "-o", tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {path}:2: agent.state_dir: must be /var/lib/<name>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piccolo.yaml"]


@pytest.mark.parametrize("state_dir", ["/", "//"])
def test_the_agent_refuses_the_root_directory_as_its_state_dir(tmp_path: Path, state_dir: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(f"agent:\n  state_dir: '{state_dir}'\n")
    with pytest.raises(ModelError) as exc:
        load_policy(path)
    assert str(exc.value).startswith(f"{path}:2: agent.state_dir: must be a directory of its own")
    path.write_text(f"agent:\n  state_dir: '{tmp_path}'\n")  # tests run the agent in a tmp dir
    assert load_policy(path).agent.state_dir == str(tmp_path)


# --- checks the operator declares, baked into the image ----------------------------------------------

DECLARED = """\
version: 0.1.0
health_policy:
  startup: {required_components: [tpm, storage, api, web, ingest], optional_components: [docker, sock]}
  checks:
    tpm: {timeout_seconds: 20}
    web: {kind: http, url: 'http://127.0.0.1:8080/ready', json: {field: status, equals: ok}}
    sock: {kind: tcp, address: '127.0.0.1:5432', run_on: [runtime]}
    ingest: {kind: exec, command: [/usr/libexec/acme/check-ingest, --quick]}
"""


def test_declared_checks_validate_and_land_in_the_vendor_policy(tmp_path: Path) -> None:
    """``config validate`` lints the checks as the agent does (the exec program is not looked for on
    the build machine: it is the device's), and ``render`` serialises them for the agent to read back."""
    path = write(tmp_path, DECLARED)
    r = cli("config", "validate", path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["valid"], r.stdout + r.stderr
    out = tmp_path / "overlays"
    r = cli("render", "-c", path, "-o", out)
    assert r.returncode == 0, r.stderr
    vendor = out / "coreos-overlay" / "app-admin" / "piccolod" / "files" / "health-policy.yaml"
    text = vendor.read_text()
    assert "    ingest:\n      kind: exec\n      command:\n      - /usr/libexec/acme/check-ingest\n" in text
    assert "    tpm:\n      timeout_seconds: 20.0\n      tcti: device:/dev/tpmrm0\n" in text
    assert " interval_seconds" not in text and "success_threshold" not in text  # options only where set
    agent = load_policy(vendor, lint=False)
    assert agent.health_policy == load_config(path).health_policy


@pytest.mark.parametrize(
    ("block", "line", "key", "words"),
    [
        ("web: {kind: htp}", 4, "health_policy.checks.web.kind", "must be one of exec"),
        ("web: {kind: tcp, address: 'a:1', timeout_seconds: 70}", 4,
         "health_policy.checks.web.timeout_seconds", "must be below the interval (60s)"),
        ("x: {kind: exec, command: [/bin/sh, -c, 'echo $(id)']}", 4,
         "health_policy.checks.x.command[2]", "must not contain '$('"),
    ],
)  # fmt: skip
def test_bad_declared_checks_fail_validate_with_exit_2(
    tmp_path: Path, block: str, line: int, key: str, words: str
) -> None:
    path = write(tmp_path, f"version: 0.1.0\nhealth_policy:\n  checks:\n    {block}\n")
    r = cli("config", "validate", path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {path}:{line}: {key}: ") and words in r.stderr.splitlines()[0]
