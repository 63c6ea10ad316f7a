"""Policy files as ``piccolod check --config FILE`` sees them: bad files and the vendor+admin merge.

Every bad file must make the real command exit 3 ("could not assess") with one line on stderr naming
the file, the line and the key, and nothing on stdout (no assessment ran).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from piccolod.model import leaves, set_path
from piccolod.policy import Between, Component, FailureCondition, ModelError, PolicyFile, load_policy

PICCOLOD = [sys.executable, "-m", "piccolod"]

# (name, file text, line, dotted key, words the message must contain)
BAD: list[tuple[str, str, int, str, str]] = [
    ("unknown-top-key", "healt_policy:\n  startup: {}\n", 1, "healt_policy", "unknown key"),
    (
        "unknown-nested-key",
        "health_policy:\n  startup:\n    timeout: 30\n",
        3,
        "health_policy.startup.timeout",
        "unknown key",
    ),
    (
        "interval-not-a-number",
        "health_policy:\n  runtime:\n    check_interval_seconds: soon\n",
        3,
        "health_policy.runtime.check_interval_seconds",
        "expected a number",
    ),
    (
        "threshold-zero",
        "health_policy:\n  runtime:\n    failure_threshold: 0\n",
        3,
        "health_policy.runtime.failure_threshold",
        "must be between 1 and 1000, got 0",
    ),
    (
        "threshold-float",
        "health_policy:\n  runtime:\n    failure_threshold: 2.5\n",
        3,
        "health_policy.runtime.failure_threshold",
        "expected an integer",
    ),
    (
        "required-and-optional",
        "health_policy:\n  startup:\n    required_components: [tpm, api]\n"
        "    optional_components:\n      - docker\n      - tpm\n",
        6,
        "health_policy.startup.optional_components[1]",
        "both required and optional",
    ),
    (
        "unknown-component",
        "health_policy:\n  startup:\n    required_components:\n      - tpm\n      - gpu\n",
        5,
        "health_policy.startup.required_components[1]",
        "must be one of",
    ),
    (
        "component-twice",
        "health_policy:\n  startup:\n    required_components: [tpm, tpm]\n",
        3,
        "health_policy.startup.required_components[1]",
        "listed twice",
    ),
    (
        "duplicate-key",
        "agent:\n  listen: 127.0.0.1:8080\n  listen: 127.0.0.1:9090\n",
        3,
        "agent.listen",
        "duplicate key",
    ),
    (
        "percent-out-of-range",
        "health_policy:\n  thresholds:\n\n    min_disk_space_percent: 150\n",
        4,
        "health_policy.thresholds.min_disk_space_percent",
        "between 0 and 100",
    ),
    ("listen-without-port", "agent:\n  listen: localhost\n", 2, "agent.listen", "host:port"),
    (
        "relative-mount",
        "health_policy:\n  checks:\n    storage:\n      mounts: [/, var]\n",
        4,
        "health_policy.checks.storage.mounts",
        "absolute path",
    ),
    (
        "target-port-too-big",
        "health_policy:\n  checks:\n    network:\n      targets: ['127.0.0.1:99999']\n",
        4,
        "health_policy.checks.network.targets",
        "port must be 1-65535",
    ),
    (
        "bad-dns-name",
        "health_policy:\n  checks:\n    network:\n      dns_names: ['bad name!']\n",
        4,
        "health_policy.checks.network.dns_names",
        "not a valid DNS name",
    ),
    (
        "empty-reboot-command",
        "health_policy:\n  rollback:\n    reboot_command: []\n",
        3,
        "health_policy.rollback.reboot_command",
        "must name a command",
    ),
    (
        "automatic-not-boolean",
        "health_policy:\n  rollback:\n    enable_automatic: 1\n",
        3,
        "health_policy.rollback.enable_automatic",
        "expected true or false",
    ),
    (
        "unknown-failure-condition",
        "health_policy:\n  rollback:\n    failure_conditions: [startup_timeout, cosmic_rays]\n",
        3,
        "health_policy.rollback.failure_conditions[1]",
        "must be one of",
    ),
    (
        "no-failure-condition",  # issue 13: every failing gate would have opened at its deadline
        "health_policy:\n  rollback:\n    failure_conditions: []\n",
        3,
        "health_policy.rollback.failure_conditions",
        "must name at least one condition (to never reboot automatically, set enable_automatic: false)",
    ),
    (
        "failure-condition-twice",
        "health_policy:\n  rollback:\n    failure_conditions: [startup_timeout, startup_timeout]\n",
        3,
        "health_policy.rollback.failure_conditions[1]",
        "listed twice",
    ),
    (
        "usr-device-not-spelled-out",
        "agent:\n  boot:\n    usr_device: /dev/vda3\n",
        3,
        "agent.boot.usr_device",
        "must be auto, device:/PATH",
    ),
    (
        "control-character",
        'health_policy:\n  checks:\n    tpm: {tcti: "device:/dev/tpm\\n0"}\n',
        3,
        "health_policy.checks.tpm.tcti",
        "control characters",
    ),
    ("list-not-mapping", "health_policy:\n  - startup\n", 1, "health_policy", "expected a mapping"),
    *(
        (
            f"{key.rsplit('.', 1)[1]}-{word}",
            f"health_policy:\n  {key.split('.')[0]}:\n    {key.split('.')[1]}: {value}\n",
            3,
            f"health_policy.{key}",
            words,
        )
        for key, kind in (
            ("startup.timeout_seconds", "positive"),
            ("runtime.check_interval_seconds", "positive"),
            ("rollback.reboot_grace_seconds", "non_negative"),
            ("thresholds.min_disk_space_percent", "percent"),
            ("thresholds.container_startup_seconds", "non_negative"),
            ("thresholds.network_timeout_seconds", "positive"),
            ("runtime.failure_threshold", "int"),
            ("thresholds.max_io_errors", "int"),
        )
        for word, value in (("nan", ".nan"), ("inf", ".inf"), ("minus-inf", "-.inf"))
        for words in ("expected an integer" if kind == "int" else "must be a finite number",)
    ),
    *(
        (
            f"{key.rsplit('.', 1)[1]}-{value}",
            f"health_policy:\n  {key.split('.')[0]}:\n    {key.split('.')[1]}: {value}\n",
            3,
            f"health_policy.{key}",
            words,
        )
        for key, value, words in (
            (
                "thresholds.network_timeout_seconds",
                "1.0e+10",
                "must be between 0.05 and 300 seconds, got 1e+10",
            ),
            ("thresholds.network_timeout_seconds", "0.01", "must be between 0.05 and 300 seconds, got 0.01"),
            ("thresholds.tpm_operation_timeout_seconds", "301", "must be between 0.05 and 300 seconds"),
            ("startup.timeout_seconds", "1.0e+300", "must be between 0.1 and 3600 seconds, got 1e+300"),
            ("startup.timeout_seconds", "0", "must be between 0.1 and 3600 seconds, got 0"),
            ("rollback.reboot_grace_seconds", "86400", "must be between 0 and 3600 seconds"),
            ("rollback.reboot_grace_seconds", "-1", "must be between 0 and 3600 seconds"),
            ("runtime.check_interval_seconds", "1.0e+12", "must be between 0.05 and 86400 seconds"),
            ("runtime.check_interval_seconds", "0.001", "must be between 0.05 and 86400 seconds"),
            ("runtime.failure_threshold", "1001", "must be between 1 and 1000"),
            ("thresholds.container_startup_seconds", "1.0e+9", "must be between 0 and 86400 seconds"),
            ("thresholds.max_io_errors", "10000000000", "must be between 0 and 1e+09"),
            ("thresholds.max_io_errors", "-3", "must be between 0 and 1e+09"),
            ("startup.optional_all_failed", "maybe", "must be one of unhealthy, degraded"),
        )
    ),
    *(
        (
            f"{check}-{name}",
            f"health_policy:\n  checks:\n    {check}:\n      {key}: {value}\n",
            4,
            f"health_policy.checks.{check}.{key}",
            words,
        )
        for check, key, name, value, words in (
            ("tpm", "tcti", "empty", "''", "must be a TCTI as name:config"),
            ("tpm", "tcti", "no-name", "':/dev/tpm0'", "must be a TCTI as name:config"),
            ("tpm", "tcti", "spaces", "'dev ice:/dev/tpm0'", "must be a TCTI as name:config"),
            ("tpm", "tcti", "relative-device", "device:dev/tpm0", "takes an absolute path"),
            ("docker", "host", "ssh", "ssh://box", "'ssh' endpoints are not supported"),
            ("docker", "host", "relative", "unix://docker.sock", "needs an absolute path"),
            ("docker", "host", "no-port", "tcp://127.0.0.1", "expected tcp://host:port"),
            ("docker", "host", "empty", "''", "endpoints are not supported"),
        )
    ),
    (
        "relative-state-dir",
        "agent:\n  state_dir: var/lib/piccolod\n",
        2,
        "agent.state_dir",
        "absolute path",
    ),
]


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PICCOLOD, "check", *args], check=False, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(("name", "text", "line", "key", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_exits_3_with_file_line_and_key(
    tmp_path: Path, name: str, text: str, line: int, key: str, words: str
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    r = check("--config", str(path))
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(rf"piccolod: {re.escape(str(path))}:{line}: {re.escape(key)}: .+", lines[0]), lines[0]
    assert words in lines[0]


@pytest.mark.parametrize(
    ("text", "line"),
    [("health_policy:\n  startup: [tpm\n", 3), ("agent:\n\tlisten: x\n", 2)],
    ids=["unclosed-bracket", "tab-indent"],
)
def test_malformed_yaml_exits_3_with_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    r = check("--config", str(path))
    assert r.returncode == 3
    assert re.fullmatch(rf"piccolod: {re.escape(str(path))}:{line}: malformed YAML: .+\n", r.stderr), r.stderr


def test_missing_or_unreadable_file_exits_3(tmp_path: Path) -> None:
    r = check("--config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 3
    assert r.stderr == f"piccolod: {tmp_path / 'absent.yaml'}: cannot read: No such file or directory\n"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    r = check("--config", str(binary))
    assert (r.returncode, r.stderr) == (3, f"piccolod: {binary}:1: not UTF-8 text\n")


def test_usage_errors_exit_3_too() -> None:
    r = check("--no-such-flag")
    assert r.returncode == 3
    assert "unrecognized arguments: --no-such-flag" in r.stderr


# --- vendor + admin, key by key ---------------------------------------------------------------------

VENDOR = """\
health_policy:
  startup:
    timeout_seconds: 90
    required_components: [tpm, storage, api]
    optional_components: [docker, network]
  runtime:
    check_interval_seconds: 30
    failure_threshold: 3
  thresholds:
    min_disk_space_percent: 15
  checks:
    network: {targets: ["127.0.0.1:53"], dns_names: [localhost]}
agent:
  listen: 127.0.0.1:8080
"""

ADMIN = """\
health_policy:
  runtime:
    failure_threshold: 5
  checks:
    network:
      targets: ["127.0.0.2:443"]
agent:
  listen: "[::1]:9000"
"""


def test_admin_overrides_vendor_key_by_key(tmp_path: Path) -> None:
    vendor, admin = tmp_path / "vendor.yaml", tmp_path / "admin.yaml"
    vendor.write_text(VENDOR)
    admin.write_text(ADMIN)
    p = load_policy(vendor=vendor, admin=admin)
    hp = p.health_policy
    assert hp.runtime.failure_threshold == 5  # admin
    assert hp.runtime.check_interval_seconds == 30  # vendor, sibling of an admin key
    assert hp.startup.timeout_seconds == 90  # vendor, untouched block
    assert hp.thresholds.min_disk_space_percent == 15
    assert hp.checks.network.targets == ("127.0.0.2:443",)  # lists are replaced, not appended
    assert hp.checks.network.dns_names == ("localhost",)  # vendor, sibling of an admin list
    assert p.agent.listen == "[::1]:9000"
    assert p.agent.state_dir == "/var/lib/piccolod"  # built-in default
    assert hp.startup.required_components == (Component.TPM, Component.STORAGE, Component.API)
    assert hp.rollback.failure_conditions == tuple(FailureCondition)


def test_without_files_the_defaults_apply(tmp_path: Path) -> None:
    p = load_policy(vendor=tmp_path / "none.yaml", admin=tmp_path / "none2.yaml")
    assert p.health_policy.runtime.failure_threshold == 3
    assert p.agent.listen == "127.0.0.1:8080"


def test_admin_only_and_vendor_only(tmp_path: Path) -> None:
    vendor, admin = tmp_path / "vendor.yaml", tmp_path / "admin.yaml"
    admin.write_text(ADMIN)
    assert load_policy(vendor=vendor, admin=admin).health_policy.runtime.failure_threshold == 5
    vendor.write_text(VENDOR)
    assert load_policy(vendor=vendor, admin=tmp_path / "no").health_policy.runtime.failure_threshold == 3


def test_an_error_in_the_admin_file_names_the_admin_file(tmp_path: Path) -> None:
    vendor, admin = tmp_path / "vendor.yaml", tmp_path / "admin.yaml"
    vendor.write_text(VENDOR)
    admin.write_text("health_policy:\n  runtime:\n    failure_threshold: -1\n")
    with pytest.raises(
        ModelError, match=rf"^{re.escape(str(admin))}:3: health_policy.runtime.failure_threshold"
    ):
        load_policy(vendor=vendor, admin=admin)


def test_a_conflict_made_by_the_merge_is_an_error_at_the_conflicting_item(tmp_path: Path) -> None:
    """The admin makes network required; the vendor still lists it as optional (its line 5)."""
    vendor, admin = tmp_path / "vendor.yaml", tmp_path / "admin.yaml"
    vendor.write_text(VENDOR)
    admin.write_text("health_policy:\n  startup:\n    required_components: [network]\n")
    with pytest.raises(ModelError) as err:
        load_policy(vendor=vendor, admin=admin)
    assert str(err.value) == (
        f"{vendor}:5: health_policy.startup.optional_components[1]: 'network' is both required and optional"
    )


def test_config_uses_exactly_one_file(tmp_path: Path) -> None:
    only = tmp_path / "only.yaml"
    only.write_text(ADMIN)
    p = load_policy(only, vendor=tmp_path / "vendor-never-read.yaml", admin=tmp_path / "admin-never-read")
    assert p.health_policy.checks.network.dns_names == ("piccolo.space",)  # default, not vendor
    assert p.health_policy.runtime.check_interval_seconds == 60


# --- every number has a range, and the agent runs at both ends of it -----------------------------------


def _numbers() -> list[tuple[tuple[str | int, ...], Between]]:
    out = []
    for path, tp, f in leaves(PolicyFile):
        if tp in (int, float):
            check = f.metadata.get("check")
            assert isinstance(check, Between), f"{'.'.join(map(str, path))} has no range"
            out.append((path, check))
    return out


def test_every_number_of_the_policy_has_a_range() -> None:
    assert len(_numbers()) == 9


@pytest.mark.parametrize("end", ["low", "high"])
def test_the_agent_runs_at_either_end_of_every_range(tmp_path: Path, end: str) -> None:
    """``check`` assesses and ``serve`` starts, answers and stops: no OverflowError, no traceback."""
    import socket
    import time

    from tests.agent_helpers import free_port, get, wait_for

    data: dict[str, Any] = {}
    for path, rng in _numbers():
        value: float = rng.low if end == "low" else rng.high
        if path[-1] == "failure_threshold" or path[-1] == "max_io_errors":
            value = int(value)
        set_path(data, path, value)
    port = free_port()
    data["health_policy"]["checks"] = {"storage": {"mounts": [str(tmp_path)]}, "network": {"dns_names": []}}
    data["health_policy"]["startup"]["required_components"] = ["storage", "api"]  # these pass here
    data["health_policy"]["startup"]["optional_components"] = ["tpm", "docker", "network"]
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(8)
        data["health_policy"]["checks"]["network"]["targets"] = [f"127.0.0.1:{target.getsockname()[1]}"]
        data["agent"] = {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "state"),
                         "boot": {"cmdline": str(tmp_path / "no-cmdline")}}  # fmt: skip
        config = tmp_path / "policy.yaml"
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        r = check("--config", str(config))
        assert r.returncode in (1, 2), r.stderr  # tpm, docker (and api: no agent yet) fail; no crash
        assert "Traceback" not in r.stderr and r.stderr == ""
        proc = subprocess.Popen(
            [*PICCOLOD, "serve", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: _answers(port), timeout=20, what="the API")
            assert get(port, "/livez")[0] == 200
            time.sleep(0.5)  # an assessment or two at the low end
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert b"Traceback" not in out and b"OverflowError" not in out


def _answers(port: int) -> bool:
    from tests.agent_helpers import get

    try:
        return get(port, "/livez", timeout=1)[0] == 200
    except OSError:
        return False
