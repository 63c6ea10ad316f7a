"""Checks the policy declares: kinds, options and their ranges, names, drop-in directories, the lint.

Bad policies go through the real ``piccolod check --config FILE`` (one line naming the file, line and
key, exit 3, nothing on stdout), as in tests/test_policy.py; layering and drop-ins through
``load_policy`` on real directories.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from piccolod.checkspec import (
    ContainerCheck,
    DnsCheck,
    ExecCheck,
    HttpCheck,
    JsonMatch,
    Phase,
    SystemdUnitCheck,
    TcpCheck,
)
from piccolod.model import ModelError, Source, build, json_schema, to_plain
from piccolod.policy import Component, PolicyFile, load_policy

PICCOLOD = [sys.executable, "-m", "piccolod"]

# The issue's own example, as an operator writes it.
EXAMPLE = """\
health_policy:
  startup: {required_components: [tpm, storage, api, web, ingest], optional_components: [docker, sock]}
  checks:
    web:    {kind: http, url: 'http://127.0.0.1:8080/ready', status: 200}
    sock:   {kind: tcp, address: '127.0.0.1:5432'}
    ingest: {kind: exec, command: [/usr/libexec/acme/check-ingest, --quick]}
    app:    {kind: container, name: acme-app}
    sshd:   {kind: systemd_unit, unit: sshd.service}
    ns:     {kind: dns, name: update.example.com}
"""


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PICCOLOD, "check", *args], check=False, capture_output=True, text=True, timeout=60
    )


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_the_issues_example_declares_six_kinds(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path / "policy.yaml", EXAMPLE), lint=False)
    hp = p.health_policy
    custom = hp.checks.custom
    assert custom["web"] == HttpCheck(url="http://127.0.0.1:8080/ready", status=200)
    assert custom["sock"] == TcpCheck(address="127.0.0.1:5432")
    assert custom["ingest"] == ExecCheck(command=("/usr/libexec/acme/check-ingest", "--quick"))
    assert custom["app"] == ContainerCheck(name="acme-app")
    assert custom["sshd"] == SystemdUnitCheck(unit="sshd.service")
    assert custom["ns"] == DnsCheck(name="update.example.com")
    assert hp.checked() == (
        Component.DOCKER, Component.CONTAINERS, Component.TPM, Component.STORAGE, Component.API,
        "ingest", "sock", "web",
    )  # fmt: skip
    assert [hp.required(n) for n in ("web", "ingest", "sock")] == [True, True, False]
    catalog = {d.name: d for d in hp.catalog()}
    assert catalog["app"].disabled == "not named in startup.required_components or optional_components"
    assert catalog["web"].kind == "http" and catalog["web"].enabled and catalog["web"].required
    assert catalog["tpm"].kind == "tpm" and catalog["tpm"].run_on == (Phase.GATE, Phase.RUNTIME)


def test_options_fall_back_to_the_policy_wide_values() -> None:
    data: dict[str, Any] = {
        "health_policy": {
            "runtime": {"check_interval_seconds": 30, "failure_threshold": 4},
            "thresholds": {"network_timeout_seconds": 2, "tpm_operation_timeout_seconds": 7},
            "checks": {
                "tpm": {"timeout_seconds": 9, "success_threshold": 2},
                "web": {"kind": "http", "url": "http://[::1]:81/x", "interval_seconds": 5,
                        "failure_threshold": 1, "start_period_seconds": 60, "run_on": ["runtime"]},
            },
        }
    }  # fmt: skip
    hp = build(PolicyFile, data, Source("<t>")).health_policy
    tpm, storage, web = hp.options("tpm"), hp.options("storage"), hp.options("web")
    assert (tpm.timeout_seconds, tpm.interval_seconds, tpm.failure_threshold, tpm.success_threshold) == (
        9,
        30,
        4,
        2,
    )
    assert (storage.timeout_seconds, storage.success_threshold, storage.start_period_seconds) == (2, 1, 0)
    assert (web.timeout_seconds, web.interval_seconds, web.failure_threshold) == (2, 5, 1)
    assert web.start_period_seconds == 60 and web.run_on == (Phase.RUNTIME,)
    assert not hp.runs_in("web", Phase.GATE) and hp.runs_in("tpm", Phase.GATE)


# (name, the checks block under health_policy.checks (its line 3), the key under it, words)
BAD: list[tuple[str, str, str, str]] = [
    ("unknown-kind", "web: {kind: htp, url: 'http://x/'}", "web.kind", "must be one of exec"),
    ("no-kind", "web: {url: 'http://x/'}", "web", "needs a kind"),
    ("misspelt-builtin", "netwrok: {targets: []}", "netwrok", "or a misspelt key"),
    (
        "key-of-another-kind",
        "web: {kind: http, url: 'http://x/', unit: a.service}",
        "web.unit",
        "unknown key",
    ),
    ("missing-url", "web: {kind: http}", "web.url", "required key is missing"),
    ("https", "web: {kind: http, url: 'https://x/'}", "web.url", "https is not spoken"),
    ("credentials", "web: {kind: http, url: 'http://u:p@x/'}", "web.url", "credentials"),
    ("status", "web: {kind: http, url: 'http://x/', status: 99}", "web.status", "between 100 and 599"),
    (
        "json-list",
        "web: {kind: http, url: 'http://x/', json: {field: a, equals: [1]}}",
        "web.json.equals",
        "string, number",
    ),
    (
        "json-path",
        "web: {kind: http, url: 'http://x/', json: {field: 'a..b', equals: 1}}",
        "web.json.field",
        "dotted path",
    ),
    ("relative-program", "x: {kind: exec, command: [check-ingest]}", "x.command", "absolute path"),
    ("empty-command", "x: {kind: exec, command: []}", "x.command", "must name a program"),
    ("newline-in-argv", 'x: {kind: exec, command: [/bin/true, "a\\nb"]}', "x.command", "control characters"),
    ("unit-option", "u: {kind: systemd_unit, unit: --all.service}", "u.unit", "not a unit name"),
    ("unit-no-type", "u: {kind: systemd_unit, unit: sshd}", "u.unit", "not a unit name"),
    (
        "restarts",
        "u: {kind: systemd_unit, unit: a.service, max_restarts: -1}",
        "u.max_restarts",
        "between 0 and",
    ),
    ("container-name", "c: {kind: container, name: '../x'}", "c.name", "not a container name"),
    ("tcp-port", "t: {kind: tcp, address: '127.0.0.1:0'}", "t.address", "port must be 1-65535"),
    ("dns-name", "d: {kind: dns, name: 'bad name'}", "d.name", "not a valid DNS name"),
    ("bad-name", "'we b': {kind: dns, name: x}", "we b", "not a check name"),
    ("reserved-name", "piccolod: {kind: dns, name: x}", "piccolod", "the agent's own name"),
    ("timeout-range", "tpm: {timeout_seconds: 3601}", "tpm.timeout_seconds", "between 0.05 and 3600"),
    ("interval-range", "tpm: {interval_seconds: 0.01}", "tpm.interval_seconds", "between 0.05 and 86400"),
    ("failure-threshold", "tpm: {failure_threshold: 0}", "tpm.failure_threshold", "between 1 and 1000"),
    ("success-threshold", "tpm: {success_threshold: 1001}", "tpm.success_threshold", "between 1 and 1000"),
    ("start-period", "tpm: {start_period_seconds: -1}", "tpm.start_period_seconds", "between 0 and 86400"),
    ("start-period-inf", "tpm: {start_period_seconds: .inf}", "tpm.start_period_seconds", "finite"),
    ("run-on-empty", "tpm: {run_on: []}", "tpm.run_on", "must name gate, runtime or both"),
    ("run-on-twice", "tpm: {run_on: [gate, gate]}", "tpm.run_on", "listed twice"),
    ("run-on-word", "tpm: {run_on: [boot]}", "tpm.run_on[0]", "must be one of gate, runtime"),
    ("enabled-word", "tpm: {enabled: maybe}", "tpm.enabled", "expected true or false"),
    (
        "timeout-not-below-interval",
        "tpm: {timeout_seconds: 60}",
        "tpm.timeout_seconds",
        "must be below the interval",
    ),
    (
        "interval-not-above-timeout",
        "web: {kind: tcp, address: 'a:1', interval_seconds: 5}",
        "web.interval_seconds",
        "must be below the interval (5s)",
    ),
]


@pytest.mark.parametrize(("name", "block", "key", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_checks_exit_3_with_file_line_and_key(
    tmp_path: Path, name: str, block: str, key: str, words: str
) -> None:
    path = write(tmp_path / f"{name}.yaml", f"health_policy:\n  checks:\n    {block}\n")
    line, key = 3, f"health_policy.checks.{key}"
    r = check("--config", str(path))
    assert (r.returncode, r.stdout) == (3, ""), r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(rf"piccolod: {re.escape(str(path))}:{line}: {re.escape(key)}: .+", lines[0]), lines[0]
    assert words in lines[0]


def test_a_name_no_check_declares_is_refused_where_it_is_named(tmp_path: Path) -> None:
    text = "health_policy:\n  startup:\n    required_components: [tpm]\n    optional_components: [web]\n"
    r = check("--config", str(write(tmp_path / "p.yaml", text)))
    assert r.returncode == 3
    assert r.stderr.startswith(
        f"piccolod: {tmp_path / 'p.yaml'}:4: health_policy.startup.optional_components[0]:"
    )
    assert "must be one of the built-in checks" in r.stderr and "got 'web'" in r.stderr


def test_timing_is_only_held_against_a_check_that_sets_its_own() -> None:
    """Policies from before per-check options (a 0.2 s interval, 5 s deadlines) stay valid."""
    data = {"health_policy": {"runtime": {"check_interval_seconds": 0.2}}}
    assert build(PolicyFile, data, Source("<t>")).health_policy.options("tpm").timeout_seconds == 10


def test_the_exec_lint_sees_this_machine(tmp_path: Path) -> None:
    """A program that is missing or not executable: ``piccolod check`` refuses the policy (one line,
    exit 3); loading without the lint (``serve``) accepts it, to show the check as refused."""
    prog = write(tmp_path / "bin" / "probe", "#!/bin/sh\nexit 0\n", 0o644)
    text = (
        "health_policy:\n  startup: {required_components: [x], optional_components: []}\n"
        f"  checks:\n    x: {{kind: exec, command: [{prog}]}}\n"
    )
    policy = write(tmp_path / "p.yaml", text)
    r = check("--config", str(policy))
    assert r.returncode == 3
    assert r.stderr == (
        f"piccolod: {policy}:4: health_policy.checks.x.command[0]: {prog} is not executable "
        "(chmod +x, and start it with a #! line)\n"
    )
    assert load_policy(policy, lint=False).health_policy.checked() == ("x",)
    prog.unlink()
    with pytest.raises(ModelError, match="no such file or directory"):
        load_policy(policy)
    prog.mkdir()
    with pytest.raises(ModelError, match="is not a regular file"):
        load_policy(policy)
    # A declared check that does not run is not linted.
    write(policy, text.replace("[x]", "[storage]"))
    assert load_policy(policy).health_policy.catalog()[-1].disabled is not None


# --- drop-in directories -------------------------------------------------------------------------------


def layers(tmp_path: Path) -> tuple[Path, Path]:
    """A vendor directory and an administrator directory, each with its policy file's path."""
    return tmp_path / "usr" / "health-policy.yaml", tmp_path / "etc" / "health-policy.yaml"


def script(path: Path, body: str = "exit 0") -> Path:
    return write(path, f"#!/bin/sh\n{body}\n", 0o755)


def test_checks_d_declares_and_the_admin_replaces_the_vendors_by_name(tmp_path: Path) -> None:
    vendor, admin = layers(tmp_path)
    write(vendor, "health_policy:\n  startup: {required_components: [web], optional_components: []}\n")
    write(
        vendor.parent / "checks.d" / "web.yaml",
        "kind: http\nurl: 'http://127.0.0.1:1/a'\ntimeout_seconds: 2\n",
    )
    write(admin.parent / "checks.d" / "web.yaml", "kind: tcp\naddress: '127.0.0.1:2'\n")
    write(admin.parent / "checks.d" / "README", "not a check: only *.yaml is read\n")
    write(admin.parent / "checks.d" / ".web.yaml.swp", "editor litter: hidden files are not read\n")
    hp = load_policy(vendor=vendor, admin=admin).health_policy
    assert hp.checks.custom == {"web": TcpCheck(address="127.0.0.1:2")}  # whole check replaced
    assert hp.checked() == ("web",)


def test_the_admin_policy_file_merges_onto_the_vendors_drop_in(tmp_path: Path) -> None:
    vendor, admin = layers(tmp_path)
    write(vendor, "health_policy:\n  startup: {required_components: [web]}\n")
    write(vendor.parent / "checks.d" / "web.yaml", "kind: http\nurl: 'http://127.0.0.1:1/a'\n")
    write(admin, "health_policy:\n  checks:\n    web: {timeout_seconds: 3, status: 204}\n")
    web = load_policy(vendor=vendor, admin=admin).health_policy.checks.custom["web"]
    assert web == HttpCheck(url="http://127.0.0.1:1/a", status=204, timeout_seconds=3)


def test_greenboot_directories_weigh_their_scripts(tmp_path: Path) -> None:
    vendor, admin = layers(tmp_path)
    write(vendor, "health_policy:\n  startup: {required_components: [storage], optional_components: []}\n")
    a = script(vendor.parent / "required.d" / "00_vendor.sh")
    b = script(vendor.parent / "wanted.d" / "10_vendor.sh")
    c = script(admin.parent / "required.d" / "20-admin")
    d = script(admin.parent / "wanted.d" / "10_vendor.sh", "exit 1")  # overrides the vendor's by name
    hp = load_policy(vendor=vendor, admin=admin).health_policy
    assert hp.startup.required_components == ("storage", "00_vendor.sh", "20-admin")
    assert hp.startup.optional_components == ("10_vendor.sh",)
    assert {n: s.command for n, s in hp.checks.custom.items()} == {  # type: ignore[union-attr]
        "00_vendor.sh": (str(a),), "10_vendor.sh": (str(d),), "20-admin": (str(c),),
    }  # fmt: skip
    assert b.exists()


def test_the_startup_lists_outweigh_a_directory_and_enabled_false_disables(tmp_path: Path) -> None:
    """The administrator demotes a vendor's required script and switches another one off."""
    vendor, admin = layers(tmp_path)
    script(vendor.parent / "required.d" / "01-slow")
    script(vendor.parent / "required.d" / "02-broken")
    write(
        admin,
        "health_policy:\n  startup: {required_components: [tpm], optional_components: [01-slow]}\n"
        "  checks:\n    02-broken: {enabled: false}\n",
    )
    hp = load_policy(vendor=vendor, admin=admin).health_policy
    assert hp.startup.required_components == ("tpm", "02-broken")
    assert hp.startup.optional_components == ("01-slow",)
    assert hp.checked() == (Component.TPM, "01-slow")
    assert {d.name: d.disabled for d in hp.catalog()}["02-broken"] == "enabled: false"


@pytest.mark.parametrize(
    ("where", "other"),
    [
        ("checks.d/x.yaml", "policy"),
        ("required.d/x", "checks.d/x.yaml"),
        ("wanted.d/x", "required.d/x"),
    ],
)
def test_a_name_twice_in_one_layer_is_an_error(tmp_path: Path, where: str, other: str) -> None:
    _, admin = layers(tmp_path)
    write(admin, "health_policy:\n  checks:\n    y: {kind: dns, name: a}\n")
    for rel in (where, other):
        if rel == "policy":
            write(admin, "health_policy:\n  checks:\n    x: {kind: dns, name: a}\n")
        elif rel.endswith(".yaml"):
            write(admin.parent / rel, "kind: dns\nname: b\n")
        else:
            script(admin.parent / rel)
    with pytest.raises(ModelError) as err:
        load_policy(admin)
    message = str(err.value)
    assert "health_policy.checks.x: already defined in" in message
    assert "a name is defined once per layer" in message


@pytest.mark.parametrize(
    ("rel", "words"),
    [
        ("checks.d/tpm.yaml", "'tpm' is a built-in check: set it under health_policy.checks.tpm"),
        ("required.d/api", "'api' is a built-in check"),
        ("required.d/bad name.sh", "cannot name a check: not a check name"),
        ("wanted.d/-x", "cannot name a check"),
        ("checks.d/piccolod.yaml", "the agent's own name"),
    ],
)
def test_drop_in_names_are_checked(tmp_path: Path, rel: str, words: str) -> None:
    policy = write(tmp_path / "p.yaml", "")
    script(tmp_path / rel) if not rel.endswith(".yaml") else write(tmp_path / rel, "kind: dns\nname: a\n")
    with pytest.raises(ModelError) as err:
        load_policy(policy)
    assert str(err.value).startswith(str(tmp_path / rel) + ": ") and words in str(err.value)


def test_an_error_in_a_drop_in_names_its_file_and_line(tmp_path: Path) -> None:
    policy = write(tmp_path / "p.yaml", "health_policy:\n  startup: {required_components: [web]}\n")
    dropin = write(tmp_path / "checks.d" / "web.yaml", "kind: http\nurl: 'http://x/'\n\nstatus: 1000\n")
    r = check("--config", str(policy))
    assert r.returncode == 3
    assert r.stderr.startswith(f"piccolod: {dropin}:4: health_policy.checks.web.status: must be between 100")


def test_a_non_executable_greenboot_script_is_refused_by_the_lint(tmp_path: Path) -> None:
    policy = write(
        tmp_path / "p.yaml", "health_policy:\n  startup: {required_components: [], optional_components: []}\n"
    )
    text = write(tmp_path / "required.d" / "50-notes.txt", "remember to add a check\n")
    r = check("--config", str(policy))
    assert r.returncode == 3
    assert r.stderr == (
        f"piccolod: {text}: health_policy.checks.50-notes.txt.command[0]: {text} is not executable "
        "(chmod +x, and start it with a #! line)\n"
    )
    assert load_policy(policy, lint=False).health_policy.checked() == ("50-notes.txt",)


def test_directories_are_read_with_bounds(tmp_path: Path) -> None:
    from piccolod.dropins import MAX_ENTRIES

    policy = write(tmp_path / "p.yaml", "")
    for i in range(MAX_ENTRIES + 1):
        script(tmp_path / "wanted.d" / f"c{i:03d}")
    with pytest.raises(ModelError, match=f"wanted.d: more than {MAX_ENTRIES} entries"):
        load_policy(policy)
    for child in (tmp_path / "wanted.d").iterdir():
        child.unlink()
    (tmp_path / "wanted.d").rmdir()
    write(tmp_path / "checks.d", "a file where a directory belongs\n")
    with pytest.raises(ModelError, match=r"checks\.d: cannot read the directory: Not a directory"):
        load_policy(policy)
    (tmp_path / "checks.d").unlink()
    (tmp_path / "checks.d").mkdir()
    os.mkfifo(tmp_path / "checks.d" / "fifo.yaml")  # would block a plain open(): refused at once
    with pytest.raises(ModelError, match=r"fifo\.yaml: cannot read: not a regular file"):
        load_policy(policy)


# --- what the builder bakes in ------------------------------------------------------------------------


def test_the_serialised_policy_round_trips_and_lists_options_only_where_set(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path / "policy.yaml", EXAMPLE), lint=False)
    plain = to_plain(p, omit_defaults=True)
    assert plain["health_policy"]["checks"]["web"] == {
        "kind": "http", "url": "http://127.0.0.1:8080/ready", "status": 200, "json": None,
    }  # fmt: skip
    assert plain["health_policy"]["checks"]["tpm"] == {"tcti": "device:/dev/tpmrm0"}
    again = write(tmp_path / "again" / "policy.yaml", yaml.safe_dump(plain, sort_keys=False))
    assert load_policy(again, lint=False) == p
    full = to_plain(p)
    assert full["health_policy"]["checks"]["tpm"]["timeout_seconds"] is None  # config show lists all


def test_json_schema_tells_the_kinds_apart() -> None:
    checks = json_schema(PolicyFile)["properties"]["health_policy"]["properties"]["checks"]
    assert "custom" not in checks["properties"]
    kinds = checks["additionalProperties"]["oneOf"]
    assert [k["properties"]["kind"] for k in kinds] == [
        {"const": kind} for kind in ("exec", "systemd_unit", "http", "tcp", "container", "dns")
    ]
    assert all(k["required"] == ["kind"] and k["additionalProperties"] is False for k in kinds)
    assert checks["properties"]["tpm"]["properties"]["timeout_seconds"]["default"] is None


def test_json_match_equality_is_jsons() -> None:
    from piccolod.checks.kinds.http import same

    assert same("ok", "ok") and same(1, 1.0) and same(None, None) and same(True, True)
    assert not same(True, 1) and not same(1, True) and not same("1", 1) and not same(None, False)
    assert JsonMatch(field="a", equals=None).equals is None


@pytest.mark.parametrize("end", ["low", "high"])
def test_every_option_works_at_either_end_of_its_range(tmp_path: Path, end: str) -> None:
    """Each option at its smallest and largest value: the policy loads, the engine and the hysteresis
    run with it, and the verdict is an answer, not an exception (no OverflowError, no negative wait)."""
    from piccolod.assess import Assessor
    from piccolod.hysteresis import Hysteresis, Rule

    low = end == "low"
    options = {
        "timeout_seconds": 0.05 if low else 3600,
        "interval_seconds": 0.06 if low else 86400,
        "failure_threshold": 1 if low else 1000,
        "success_threshold": 1 if low else 1000,
        "start_period_seconds": 0 if low else 86400,
        "run_on": ["runtime"] if low else ["gate", "runtime"],
    }
    prog = script(tmp_path / "true", "exit 0")
    text = yaml.safe_dump(
        {
            "health_policy": {
                "startup": {"required_components": ["x", "u"], "optional_components": []},
                "checks": {
                    "x": {"kind": "exec", "command": [str(prog)], **options},
                    "u": {
                        "kind": "systemd_unit",
                        "unit": "x.service",
                        "max_restarts": 0 if low else 1_000_000,
                    },
                },
            }
        }
    )
    p = load_policy(write(tmp_path / "p.yaml", text))
    eff = p.health_policy.options("x")
    assert (eff.timeout_seconds, eff.interval_seconds) == (
        options["timeout_seconds"],
        options["interval_seconds"],
    )
    a = Assessor(
        timeout_for=lambda name, pol: min(pol.health_policy.options(name).timeout_seconds, 2.0)
    ).assess(p)
    assert {r.component for r in a.results} == {"x", "u"}
    rules = Hysteresis(
        3, rules=lambda n: Rule(eff.failure_threshold, eff.success_threshold, eff.start_period_seconds)
    )
    assert rules.apply(a).status in {"healthy", "degraded", "unhealthy"}


def test_the_documented_example_policy_is_valid(tmp_path: Path) -> None:
    """docs/agent.md's example under "Checks of your own" loads as it is written."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "agent.md").read_text()
    section = doc.split("## Checks of your own", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    hp = load_policy(write(tmp_path / "policy.yaml", example), lint=False).health_policy
    assert hp.checked() == (
        Component.DOCKER, Component.CONTAINERS, Component.TPM, Component.STORAGE, Component.API,
        "ingest", "sock", "sshd", "web",
    )  # fmt: skip
    assert {d.name: d.disabled for d in hp.catalog() if d.disabled} == {
        "network": "not named in startup.required_components or optional_components",
        "app": "not named in startup.required_components or optional_components",
        "ns": "not named in startup.required_components or optional_components",
    }
    assert hp.options("tpm").timeout_seconds == 20 and hp.options("ingest").interval_seconds == 300
