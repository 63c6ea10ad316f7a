"""A real Prometheus (Debian's ``prometheus``) scraping a real ``piccolod serve``, with the rendered rules.

Both run on 127.0.0.1 on free ports: the agent checks a directory as its storage (a missing mount
fails the check) on a Flatcar-layout disk image booted from USR-A, with a rollback record from an
earlier boot in its journal; Prometheus scrapes it every second and evaluates the rules of a
configuration whose ``for:`` durations are seconds. Every panel query of the generated dashboard must
return series; the rollback the agent found fires its alert; the component alert fires when the storage
check fails and resolves when it recovers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from piccolo_build.config import load_config
from piccolo_build.monitoring import dashboard
from piccolo_build.monitoring.render import DASHBOARD, MARKER, RULES, monitoring_files
from piccolo_build.render import write_tree
from piccolod.journal import Journal, Store
from tests.agent_helpers import free_port, policy_data, wait_for, write_policy
from tests.fixtures.daemons import _stop_process, require
from tests.fixtures.gptdisk import USR_A, USR_B, cmdline_for, usr_device
from tests.test_journal import record

pytestmark = [pytest.mark.slow]

JOB = "piccolod-live"
CONFIG = f"""\
monitoring:
  selector: 'job="{JOB}"'
  thresholds:
    down_for_seconds: 2
    unhealthy_for_seconds: 2
    component_failing_for_seconds: 2
    rollback_alert_seconds: 3600
    gate_overdue_for_seconds: 2
    stale_for_seconds: 2
"""
# What Grafana puts in for its variables (its $__rate_interval is at least four scrape intervals; the
# rollback panel's minimum interval is 1h).
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__interval": "1h"}


@dataclass
class Live:
    api: str  # Prometheus' base URL
    storage: Path  # the directory the agent's storage check looks at
    board: dict[str, Any]
    rollback_at: float

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.api}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]

    def firing(self, name: str, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts(name)
            if a["state"] == "firing" and all(a["labels"].get(k) == v for k, v in labels.items())
        ]


def _start(argv: list[str | Path], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture
def live(tmp_path: Path, flatcar_disk: Path) -> Iterator[Live]:
    prometheus = require("prometheus")
    # The monitoring files, rendered from a configuration of our own.
    (tmp_path / "piccolo.yaml").write_text(CONFIG)
    files = monitoring_files(load_config(tmp_path / "piccolo.yaml"))
    write_tree(files, tmp_path / "monitoring", MARKER)
    board = json.loads((tmp_path / "monitoring" / DASHBOARD).read_text())
    # The agent: booted from USR-A (marked), coming back from a rollback of USR-B a minute ago.
    storage = tmp_path / "disk"
    storage.mkdir()
    (tmp_path / "cmdline").write_text(cmdline_for(USR_A))
    rollback_at = round(time.time() - 60, 3)
    Store(tmp_path / "state").put(
        Journal(
            rollback=record(boot_id="an-earlier-boot", slot="USR-B", partuuid=USR_B, failed_at=rollback_at)
        )
    )
    agent_port, prom_port = free_port(), free_port()
    data = policy_data(["storage", "api"], listen=f"127.0.0.1:{agent_port}", interval=0.5, threshold=1)
    data["health_policy"]["checks"] = {"storage": {"mounts": [str(storage)]}}
    data["agent"].update(
        state_dir=str(tmp_path / "state"),
        boot={"cmdline": str(tmp_path / "cmdline"), "usr_device": usr_device(flatcar_disk, partuuid=USR_A)},
    )
    policy = write_policy(tmp_path / "policy.yaml", data)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{tmp_path / 'monitoring' / RULES}]\n"
        f"scrape_configs:\n  - job_name: {JOB}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{agent_port}']}}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    agent = _start(
        [sys.executable, "-m", "piccolod", "serve", "--config", policy], tmp_path / "agent.log", env
    )
    server = _start(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        api = f"http://127.0.0.1:{prom_port}"
        wait_for(lambda: _answers(f"{api}/-/ready"), timeout=30, what="Prometheus ready")
        wait_for(lambda: _answers(f"http://127.0.0.1:{agent_port}/livez"), timeout=30, what="piccolod's API")
        yield Live(api, storage, board, rollback_at)
    finally:
        _stop_process(server, 10)
        _stop_process(agent, 10)
        for name in ("agent.log", "prometheus.log"):
            print(f"--- {name}\n{(tmp_path / name).read_text(errors='replace')[-3000:]}")


def test_every_panel_query_returns_series_and_alerts_fire_and_resolve(live: Live) -> None:
    # Enough scrapes for every rate() window of the panels.
    wait_for(
        lambda: bool(live.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 8')), timeout=40, what="8 scrapes"
    )
    assert live.query(f'up{{job="{JOB}"}}')[0]["value"][1] == "1"

    empty = []
    queries = list(dashboard.queries(live.board))
    assert len(queries) >= 14
    for title, panel_expr in queries:
        expr = panel_expr
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, (title, expr)
        if not live.query(expr):
            empty.append(f"{title}: {expr}")
    assert not empty, "panel queries without series:\n" + "\n".join(empty)

    # What the agent exported about the machine made it through.
    info = live.query(f'piccolod_os_info{{job="{JOB}"}}')
    assert [s["metric"]["slot"] for s in info] == ["USR-A"]
    assert live.query(f'piccolod_slot_successful{{job="{JOB}", slot="USR-A"}}')[0]["value"][1] == "1"
    assert live.query(f'piccolod_rollbacks_total{{job="{JOB}"}}')[0]["value"][1] == "1"

    # The rollback the agent found in its journal: the alert fires from the timestamp.
    wait_for(lambda: bool(live.firing("PiccolodRolledBack")), timeout=15, what="PiccolodRolledBack firing")
    (rolled,) = live.firing("PiccolodRolledBack")
    assert float(rolled["value"]) == live.rollback_at
    assert rolled["annotations"]["runbook_url"].endswith("#piccolodrolledback")
    assert (
        time.strftime("%Y-%m-%d %H:%M", time.gmtime(live.rollback_at)) in rolled["annotations"]["description"]
    )

    # The storage check fails (its mount is gone): the component alert fires, then resolves.
    assert not live.alerts("PiccolodComponentFailing")
    live.storage.rename(live.storage.with_name("disk.gone"))
    wait_for(
        lambda: bool(live.firing("PiccolodComponentFailing", component="storage")),
        timeout=30,
        what="PiccolodComponentFailing firing for storage",
    )
    (failing,) = live.firing("PiccolodComponentFailing")
    assert failing["labels"]["severity"] == "warning"
    assert failing["annotations"]["summary"].startswith("storage fails on 127.0.0.1:")
    wait_for(lambda: bool(live.firing("PiccolodUnhealthy")), timeout=30, what="PiccolodUnhealthy firing")
    live.storage.with_name("disk.gone").rename(live.storage)
    wait_for(
        lambda: not live.alerts("PiccolodComponentFailing"), timeout=30, what="the component alert resolved"
    )
    wait_for(lambda: not live.alerts("PiccolodUnhealthy"), timeout=30, what="the unhealthy alert resolved")
    assert (
        live.query(f'piccolod_health_check_status{{job="{JOB}", component="storage"}}')[0]["value"][1] == "1"
    )
