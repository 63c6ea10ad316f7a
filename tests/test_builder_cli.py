"""The ``piccolo-build`` config, render and check commands, run as real processes.

Every bad input must give exit code 2, one ``error:`` line naming file, line and key, and leave the
previously rendered output exactly as it was (content, modes, mtimes, inodes).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.builder_helpers import DEFAULT_CONFIG, ROOT, cli, snapshot

COMMANDS = [
    [],
    ["config"],
    ["config", "show"],
    ["config", "validate"],
    ["config", "schema"],
    ["render"],
    ["check"],
]


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0
    assert re.fullmatch(r"piccolo-build \S+\n", r.stdout)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_everywhere(command: list[str]) -> None:
    for flag in ("-h", "--help"):
        r = cli(*command, flag)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Usage: ")


def test_config_show_json_and_precedence(tmp_path: Path) -> None:
    r = cli("config", "show", "--json", "--set", "update.group=flag", env={"PICCOLO_UPDATE_GROUP": "env"})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["update"]["group"] == "flag"
    r = cli("config", "show", "--json", env={"PICCOLO_UPDATE_GROUP": "env", "PICCOLO_BOARDS": "arm64-usr"})
    data = json.loads(r.stdout)
    assert (data["update"]["group"], data["boards"]) == ("env", ["arm64-usr"])
    r = cli("config", "show")
    assert "release: stable\n" in r.stdout


def test_config_validate_and_schema() -> None:
    r = cli("config", "validate", DEFAULT_CONFIG, "--json")
    assert (r.returncode, json.loads(r.stdout)["valid"]) == (0, True)
    schema = json.loads(cli("config", "schema").stdout)
    assert set(schema["properties"]) >= {"version", "boards", "flatcar", "update", "package", "release"}


def test_render_then_check_passes_and_noop_keeps_mtimes(tmp_path: Path) -> None:
    out = tmp_path / "overlays"
    r = cli("render", "--config", DEFAULT_CONFIG, "--output", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changed"] is True
    before = snapshot(out)
    r = cli("render", "-c", DEFAULT_CONFIG, "-o", out, "--json")
    assert json.loads(r.stdout)["changed"] is False
    assert snapshot(out) == before
    r = cli("check", "--config", DEFAULT_CONFIG, "--overlay", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok  ") == 8  # the overlay's five steps, monitoring's two, the workflow


def test_committed_overlay_checks_clean() -> None:
    r = cli("check", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is True


def test_check_fails_with_a_diff(tmp_path: Path) -> None:
    out = tmp_path / "overlays"
    shutil.copytree(ROOT / "overlays", out)
    policy = next(out.rglob("health-policy.yaml"))
    policy.write_text(policy.read_text().replace("timeout_seconds: 120.0", "timeout_seconds: 5.0"))
    r = cli("check", "--overlay", out)
    assert r.returncode == 1
    assert "FAIL diff" in r.stdout
    assert "-    timeout_seconds: 5.0\n+    timeout_seconds: 120.0\n" in r.stdout
    assert r.stderr.startswith("error: check failed: diff\n")


# (name, file text, expected line, expected key) -- line None for whole-file errors.
BAD_FILES = [
    ("malformed-yaml", "version: [0.1.0\n", 2, ""),
    ("duplicate-key", "version: 0.1.0\nversion: 0.2.0\n", 2, "version"),
    ("unknown-key", "version: 0.1.0\ncolour: red\n", 2, "colour"),
    ("unknown-nested-key", "update:\n  grup: beta\n", 2, "update.grup"),
    ("wrong-type-list", "boards: amd64-usr\n", 1, "boards"),
    (
        "wrong-type-number",
        "health_policy:\n  startup:\n    timeout_seconds: soon\n",
        3,
        "health_policy.startup.timeout_seconds",
    ),
    ("bad-version", "version: 1.0-beta\n", 1, "version"),
    ("version-injection", "version: '0.1.0$(reboot)'\n", 1, "version"),
    ("unknown-board", "boards: [amd64-usr, x86-usr]\n", 1, "boards[1]"),
    ("name-newline", 'package:\n  name: "picco\\nlod"\n', 2, "package.name"),
    ("category-dotdot", "package:\n  category: ../../etc\n", 2, "package.category"),
    ("license-injection", "package:\n  license: 'MIT; rm -rf /'\n", 2, "package.license"),
    ("server-subshell", 'update:\n  server: "https://x.example/$(id)"\n', 2, "update.server"),
    ("server-quote", 'update:\n  server: "https://x.example/\'a"\n', 2, "update.server"),
    ("server-semicolon", "update:\n  server: https://x.example/;reboot\n", 2, "update.server"),
    ("group-backtick", "update:\n  group: '`id`'\n", 2, "update.group"),
    ("state-dir-dotdot", "agent:\n  state_dir: /var/lib/../../etc\n", 2, "agent.state_dir"),
    ("state-dir-subshell", "agent:\n  state_dir: /var/lib/$(id)\n", 2, "agent.state_dir"),
    ("release-unknown-channel", "flatcar:\n  release: edge-1.2.3\n", 2, "flatcar.release"),
    ("release-short-tag", "flatcar:\n  release: beta-4757.1\n", 2, "flatcar.release"),
    ("sdk-injection", "flatcar:\n  sdk_version: '4230.2.3 && id'\n", 2, "flatcar.sdk_version"),
    ("signing-key-option", "release:\n  signing_key: --homedir=/tmp\n", 2, "release.signing_key"),
    ("output-dir-dotdot", "release:\n  output_dir: ../outside\n", 2, "release.output_dir"),
    (
        "required-and-optional",
        "health_policy:\n  startup:\n    required_components: [tpm, docker]\n"
        "    optional_components: [docker]\n",
        4,
        "health_policy.startup.optional_components[0]",
    ),
    (
        "reboot-backtick",
        "health_policy:\n  rollback:\n    reboot_command: [systemctl, '`x`']\n",
        3,
        "health_policy.rollback.reboot_command[1]",
    ),
    ("top-level-list", "- version\n", 1, ""),
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prev") / "overlays"
    r = cli("render", "-c", DEFAULT_CONFIG, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize(("name", "text", "line", "key"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, rendered: Path, name: str, text: str, line: int, key: str
) -> None:
    config = tmp_path / f"{name}.yaml"
    config.write_text(text)
    before = snapshot(rendered)
    r = cli("render", "--config", config, "--output", rendered)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr  # the error and its hint
    assert lines[1].startswith("hint: ")
    where = f"error: {config}:{line}: " + (f"{key}: " if key else "")
    assert lines[0].startswith(where), lines[0]
    assert "Traceback" not in r.stderr
    assert snapshot(rendered) == before
    assert cli("config", "validate", config).returncode == 2


@pytest.mark.parametrize(
    ("env", "flag", "key"),
    [
        ({"PICCOLO_PACKAGE_NAME": "x$(id)"}, None, "package.name"),
        ({"PICCOLO_UPDATE_SERVER": "https://a/`id`"}, None, "update.server"),
        ({}, "version=1.0\nrm", "version"),
        ({}, "boards=amd64-usr,sparc", "boards[1]"),
        ({}, "nope=1", "nope"),
        # An unset CI variable expands to "": an error naming it, never a silent null.
        ({"PICCOLO_RELEASE_SIGNING_KEY": ""}, None, "release.signing_key"),
        ({"PICCOLO_UPDATE_SERVER": " "}, None, "update.server"),
        ({}, "release.signing_key=", "release.signing_key"),
        ({}, "flatcar.sdk_version=", "flatcar.sdk_version"),
    ],
)
def test_bad_environment_and_flags(rendered: Path, env: dict[str, str], flag: str | None, key: str) -> None:
    before = snapshot(rendered)
    r = cli("render", "-o", rendered, *(["--set", flag] if flag else []), env=env)
    assert r.returncode == 2
    origin = f"environment ${next(iter(env))}" if env else "command line"
    assert r.stderr.startswith(f"error: {origin}: {key}: "), r.stderr
    assert snapshot(rendered) == before


def test_debug_shows_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("colour: red\n")
    r = cli("--debug", "config", "show", "-c", config)
    assert r.returncode != 0
    assert "Traceback" in r.stderr


def test_the_release_job_cannot_publish_an_unsigned_release() -> None:
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "piccolo.yml").read_text())
    steps = workflow["jobs"]["release"]["steps"]
    names = [s.get("name", s.get("uses")) for s in steps]
    sign = next(s for s in steps if s.get("name") == "piccolo-build release sign and verify")
    assert "piccolo-build release sign --production --require-signature" in sign["run"]
    assert sign["env"]["PICCOLO_RELEASE_SIGNING_KEY"] == "${{ vars.PICCOLO_SIGNING_KEY_ID }}"
    # The early check of the secrets and the variable runs before anything is installed or signed.
    check = next(s for s in steps if s.get("name") == "the signing keys are configured")
    assert names.index("the signing keys are configured") == 0
    for variable in ("UPDATE_SIGNING_KEY", "SIGNING_KEY", "SIGNING_KEY_ID"):
        assert f'test -n "${variable}"' in check["run"]
    assert check["env"]["SIGNING_KEY_ID"] == "${{ vars.PICCOLO_SIGNING_KEY_ID }}"
    assert check["env"]["UPDATE_SIGNING_KEY"] == "${{ secrets.PICCOLO_UPDATE_SIGNING_KEY }}"


def test_release_sign_refuses_a_release_that_would_not_be_production(tmp_path: Path) -> None:
    cases = (
        ("--production", "release.update_key is not set"),
        ("--require-signature", "signing_key is not set"),
    )
    for flag, message in cases:
        r = cli("release", "sign", flag, tmp_path, "--config", DEFAULT_CONFIG, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr, r.stderr
