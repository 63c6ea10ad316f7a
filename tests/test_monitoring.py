"""``piccolo-build monitoring``: the alert rules and the dashboard, tested the way monitoring mixins are.

The committed ``monitoring/`` is a fresh render of piccolo.yaml (and ``check`` fails with a diff when
it is not); Prometheus' own ``promtool`` accepts the rules and runs their unit tests
(``tests/monitoring/piccolod-alerts.test.yaml``, one test per alert, the "two rollback boots in a row"
case included); the configuration's selector, thresholds and runbook URL reach every rule and panel. A
real Prometheus scraping a real ``piccolod serve`` is in ``tests/test_monitoring_live.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from piccolo_build.config import BuildConfig, load_config
from piccolo_build.monitoring import dashboard, promql, rules
from piccolo_build.monitoring.render import DASHBOARD, MARKER, RULES, monitoring_files
from piccolo_build.render import write_tree
from tests.builder_helpers import DEFAULT_CONFIG, ROOT, cli
from tests.fixtures.daemons import require

COMMITTED = ROOT / "monitoring"
UNIT_TESTS = Path(__file__).parent / "monitoring" / "piccolod-alerts.test.yaml"

CUSTOM = """\
monitoring:
  selector: 'job="edge-agents", env=~"prod|staging"'
  runbook_url: https://wiki.example.test/piccolo/runbooks
  dashboard_uid: edge-fleet
  dashboard_title: Edge fleet
  thresholds:
    down_for_seconds: 90
    unhealthy_for_seconds: 5400
    component_failing_for_seconds: 1.5
    rollback_alert_seconds: 86400
    stale_intervals: 5
"""


def custom(tmp_path: Path) -> BuildConfig:
    path = tmp_path / "piccolo.yaml"
    path.write_text(CUSTOM)
    return load_config(path)


def rule_list(text: bytes) -> list[dict[str, Any]]:
    data = yaml.safe_load(text)
    assert [g["name"] for g in data["groups"]] == ["piccolod"]
    found: list[dict[str, Any]] = data["groups"][0]["rules"]
    return found


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=120,
    )


# --- the committed files ------------------------------------------------------------------------------


def test_committed_monitoring_is_the_default_render() -> None:
    from piccolo_build.check import diff_tree

    assert diff_tree(monitoring_files(load_config(DEFAULT_CONFIG)), COMMITTED, MARKER) == ""


def test_promtool_accepts_the_rules() -> None:
    r = promtool("check", "rules", COMMITTED / RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 11 rules found" in r.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    r = promtool("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_unit_test_and_every_field_an_operator_needs() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    tested = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    names = [r["alert"] for r in rule_list((COMMITTED / RULES).read_bytes())]
    assert set(names) == tested  # every alert is seen firing in a unit test
    assert len(names) == len(set(names)) == 11
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    for rule in rule_list((COMMITTED / RULES).read_bytes()):
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info", "none"}
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert f"\n### {rule['alert']}\n" in doc  # the runbook the link points at


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: the rollback alert on an in-process counter, as before, misses the
    second of two rollback boots in a row."""
    text = (COMMITTED / RULES).read_text()
    expr = next(r["expr"] for r in rule_list(text.encode()) if r["alert"] == "PiccolodRolledBack")
    broken = text.replace(expr, 'increase(piccolod_rollbacks_total{job="piccolod"}[1m]) > 0', 1)
    assert broken != text
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / RULES.name).write_text(broken)
    (tmp_path / "tests").mkdir()
    shutil.copy(UNIT_TESTS, tmp_path / "tests" / UNIT_TESTS.name)
    r = promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path / "tests")
    assert r.returncode != 0
    assert "PiccolodRolledBack" in r.stdout + r.stderr


# --- rendering ------------------------------------------------------------------------------------------


def test_the_configuration_reaches_every_rule_and_panel(tmp_path: Path) -> None:
    cfg = custom(tmp_path)
    files = {f.path: f.content for f in monitoring_files(cfg)}
    found = rule_list(files[RULES])
    by_name = {r["alert"]: r for r in found}
    sel = 'job="edge-agents", env=~"prod|staging"'
    for rule in found:
        assert sel in rule["expr"], rule["alert"]
        assert (
            rule["annotations"]["runbook_url"]
            == f"https://wiki.example.test/piccolo/runbooks#{rule['alert'].lower()}"
        )
    assert by_name["PiccolodDown"]["for"] == "1m30s"
    assert by_name["PiccolodUnhealthy"]["for"] == "1h30m"
    assert by_name["PiccolodComponentFailing"]["for"] == "1s500ms"
    assert "time() - 86400" in by_name["PiccolodRolledBack"]["expr"]
    assert " > 5 * piccolod_assessment_interval_seconds{" in by_name["PiccolodAssessmentsStale"]["expr"]
    assert "more than 5 check intervals" in by_name["PiccolodAssessmentsStale"]["annotations"]["description"]
    board = json.loads(files[DASHBOARD])
    assert (board["uid"], board["title"]) == ("edge-fleet", "Edge fleet")
    exprs = list(dashboard.queries(board))
    assert len(exprs) >= 14
    for title, expr in exprs:
        assert sel in expr, title
    path = tmp_path / "rules.yaml"
    path.write_bytes(files[RULES])
    r = promtool("check", "rules", path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_is_what_grafana_imports() -> None:
    board = json.loads((COMMITTED / DASHBOARD).read_text())
    assert board["uid"] == "piccolod-fleet" and board["schemaVersion"] >= 39
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    assert board["templating"]["list"][0]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert ids == list(range(1, len(ids) + 1))  # stable ids, in layout order
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    titles = {p["title"] for p in panels}
    # What the issue asks the dashboard to show.
    assert {
        "Fleet health by status",
        "Rollbacks over time",
        "Gate outcomes of the current boots",
        "Versions in the fleet",
        "Slowest checks",
        "Machines with a pinned update",
    } <= titles
    text = (COMMITTED / DASHBOARD).read_text()
    assert text == json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_a_render_is_byte_identical_and_leaves_an_unchanged_tree_alone(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert monitoring_files(cfg) == monitoring_files(cfg)
    out = tmp_path / "monitoring"
    assert write_tree(monitoring_files(cfg), out, MARKER)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert not write_tree(monitoring_files(cfg), out, MARKER)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_durations_and_selectors() -> None:
    cases = {
        0: "0s",
        0.25: "250ms",
        1.5: "1s500ms",
        60: "1m",
        90: "1m30s",
        3600: "1h",
        5400: "1h30m",
        86400: "1d",
    }
    assert {s: promql.duration(s) for s in cases} == cases
    for seconds in (0.0005, -1.0):
        with pytest.raises(ValueError, match="whole number of milliseconds"):
            promql.duration(seconds)
    assert promql.selector(' job="a" ') == 'job="a"'
    assert promql.selector('job="a",env!~"x|y", le="0.5"') == 'job="a",env!~"x|y", le="0.5"'
    for bad in ("", "job=a", 'job="a"}', '{job="a"}', 'job="a"; drop', 'job="a" or vector(1)', '1job="a"'):
        with pytest.raises(ValueError, match="label matchers"):
            promql.selector(bad)
    assert promql.series("up", 'job="a"', 'x="1"') == 'up{job="a", x="1"}'


# --- the command -------------------------------------------------------------------------------------


def test_the_command_writes_refuses_and_check_finds_drift(tmp_path: Path) -> None:
    out = tmp_path / "monitoring"
    r = cli("monitoring", "--config", DEFAULT_CONFIG, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "output": str(out),
        "files": [str(RULES), str(DASHBOARD)],
        "changed": True,
    }
    assert (out / RULES).read_bytes() == (COMMITTED / RULES).read_bytes()
    r = cli("monitoring", "--config", DEFAULT_CONFIG, "-o", out)
    assert r.stdout == f"{out}: {RULES}, {DASHBOARD}, unchanged\n"
    (out / RULES).write_text((out / RULES).read_text().replace("for: 10m", "for: 1m"))
    r = cli("check", "--config", DEFAULT_CONFIG, "--monitoring", out)
    assert r.returncode == 1
    assert "FAIL monitoring diff" in r.stdout
    assert "-    for: 1m\n+    for: 10m\n" in r.stdout
    assert r.stderr.startswith("error: check failed: monitoring diff\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = cli("monitoring", "-o", mine)
    assert r.returncode == 2
    assert "not a piccolo-build render (no .piccolo-monitoring)" in r.stderr
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("monitoring.selector", "job=piccolod", "must be label matchers"),
        ("monitoring.selector", 'job="a"}) or vector(1', "must be label matchers"),
        ("monitoring.runbook_url", "https://example.test/runbook#here", "not a valid URL"),
        ("monitoring.dashboard_uid", "a" * 41, "not a valid Grafana dashboard uid"),
        ("monitoring.thresholds.down_for_seconds", "0.0001", "whole number of milliseconds"),
        ("monitoring.thresholds.unhealthy_for_seconds", "9999999999", "must be between 0 and"),
        ("monitoring.thresholds.stale_intervals", "0.5", "must be between 1 and 100"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(key: str, value: str, message: str) -> None:
    r = cli("monitoring", "-o", "/nonexistent/never-written", "--set", f"{key}={value}")
    assert r.returncode == 2
    first, hint = r.stderr.splitlines()
    assert first.startswith(f"error: command line: {key}: ") and message in first
    assert hint.startswith("hint: ")


def test_without_the_sdk_it_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['grafana_foundation_sdk'] = None\n"
        "from piccolo_build.cli import run\n"
        f"sys.exit(run(['monitoring', '-o', {str(tmp_path / 'out')!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: grafana-foundation-sdk is not installed")
    assert "pip install 'piccolo-build[check]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_rules_are_yaml_of_the_documented_shape() -> None:
    data = rules.rule_file(load_config(DEFAULT_CONFIG).monitoring)
    text = rules.encode(data).decode()
    assert text.startswith(rules.HEADER)
    assert yaml.safe_load(text) == data
    first = data["groups"][0]["rules"][0]
    assert list(first) == ["alert", "expr", "for", "labels", "annotations"]


def test_the_docs_list_every_key_with_its_default_and_the_environment_sets_them() -> None:
    from piccolo_build.config import Monitoring, env_name
    from piccolod.model import default, dotted, leaves, to_plain

    doc = (ROOT / "docs" / "monitoring.md").read_text()
    defaults = to_plain(default(Monitoring))
    for path, _tp, _field in leaves(Monitoring):
        value: Any = defaults
        for part in path:
            value = value[part]
        shown = f"`{value}`" if isinstance(value, str) else f"{value:g}"
        assert f"| `{dotted(('monitoring', *path))}` | {shown} |" in doc, path
    name = env_name(("monitoring", "thresholds", "unhealthy_for_seconds"))
    assert name == "PICCOLO_MONITORING_THRESHOLDS_UNHEALTHY_FOR_SECONDS" and name in doc
    cfg = load_config(None, env={name: "300", "PICCOLO_MONITORING_SELECTOR": 'job="x"'})
    assert (cfg.monitoring.thresholds.unhealthy_for_seconds, cfg.monitoring.selector) == (300.0, 'job="x"')
