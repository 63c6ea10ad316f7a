"""The regression-aware gate and the pin in the running agent: the API, the metrics, the pin file."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from piccolod import journal
from piccolod import record as rec
from piccolod.api import listen_socket
from piccolod.assess import Assessor
from piccolod.baseline import Baseline, BaselineCheck
from piccolod.daemon import Daemon
from piccolod.gatehook import first_boot_gate
from piccolod.journal import GateVerdict, Journal, Store
from piccolod.model import Source, build
from piccolod.policy import Component, PolicyFile
from piccolod.updates import pin
from tests.agent_helpers import FACTS, Switch, gate_agent, get, wait_for
from tests.fixtures.gptdisk import USR_A, cmdline_for, gptprio_next, install_update
from tests.test_journal import record
from tests.test_metrics import value


def policy(tmp_path: Path, disk: Path, port: int, on_pre_existing: str) -> PolicyFile:
    data: dict[str, Any] = {
        "health_policy": {
            "startup": {"timeout_seconds": 0.6, "required_components": ["tpm"], "optional_components": []},
            "rollback": {
                "reboot_grace_seconds": 0.1,
                "reboot_command": ["true"],
                "on_pre_existing": on_pre_existing,
            },
        },
        "agent": gate_agent(tmp_path, port, disk),
    }
    return build(PolicyFile, data, Source("<test>"))


class Agent:
    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon, self.port = daemon, port
        self.thread = threading.Thread(target=daemon.run, daemon=True)
        self.thread.start()

    def health(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(get(self.port, "/api/v1/system/health")[2])
        return doc

    def sample(self, name: str, **labels: str) -> float:
        return value(get(self.port, "/metrics")[2].decode(), name, **labels)


def gate(d: Daemon) -> None:
    first_boot_gate(d, start_update_engine=lambda: None)  # never the host's systemctl


@pytest.fixture
def agent(tmp_path: Path, flatcar_disk: Path) -> Iterator[Any]:
    started: list[Agent] = []

    def go(healthy: bool, on_pre_existing: str = "fail", *, boot_id: str = FACTS.boot_id) -> Agent:
        (tmp_path / "run").mkdir(exist_ok=True)
        listener = listen_socket("127.0.0.1:0")
        port = listener.getsockname()[1]
        daemon = Daemon(
            policy(tmp_path, flatcar_disk, port, on_pre_existing),
            assessor=Assessor({Component.TPM: Switch(healthy)}, lambda c, p: 1.0),
            gate=gate,
            listener=listener,
            facts=replace(FACTS, boot_id=boot_id),
            env={"RUNTIME_DIRECTORY": str(tmp_path / "run")},
        )
        run = Agent(daemon, port)
        started.append(run)
        assert daemon.is_ready.wait(10)
        return run

    yield go
    for run in started:
        run.daemon.stop()
        run.thread.join(10)
        assert not run.thread.is_alive()


def updated(tmp_path: Path, disk: Path) -> None:
    install_update(disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(disk)))  # USR-B, unmarked


def baseline(tmp_path: Path, tpm: str) -> None:
    checks = (BaselineCheck("tpm", tpm),)
    Store.load(tmp_path / "state").put_baseline(
        Baseline("3815.2.5", 1.0, "b0", "USR-A", "need_reboot", "", checks)
    )


def test_a_failed_gate_pins_its_version_and_says_why(tmp_path: Path, flatcar_disk: Path, agent: Any) -> None:
    updated(tmp_path, flatcar_disk)
    baseline(tmp_path, "passed")
    run = agent(False)
    wait_for(lambda: run.health()["startup_health_check"] == "failed", what="the failed verdict")
    doc = run.health()
    assert doc["gate_failures"] == [
        {
            "component": "tpm",
            "class": "regression",
            "reason": "passed in the baseline of 3815.2.5, failed now",
        }
    ]
    found = pin.read()
    assert found is not None and found.version == rec.os_version() and found.effective
    assert doc["update_pin"]["version"] == found.version
    assert run.sample("piccolod_update_pinned") == 1
    assert run.sample("piccolod_gate_failure_class", component="tpm", **{"class": "regression"}) == 1
    assert run.sample("piccolod_gate_failure_class", component="tpm", **{"class": "pre_existing"}) == 0
    assert run.sample("piccolod_gate_outcomes_total", outcome="failed") == 1
    record_ = journal.read(tmp_path / "state").rollback
    assert record_ is not None and record_.failure_class == "regression"


def test_warn_marks_through_a_pre_existing_failure_and_raises_the_alert_metric(
    tmp_path: Path, flatcar_disk: Path, agent: Any
) -> None:
    updated(tmp_path, flatcar_disk)
    baseline(tmp_path, "failed")
    run = agent(False, "warn")
    assert run.health()["startup_health_check"] == "passed"
    assert (
        tmp_path / "run" / "gate-passed"
    ).read_text().strip() == FACTS.boot_id  # update-engine may mark it
    assert run.sample("piccolod_gate_outcomes_total", outcome="warned") == 1
    assert run.sample("piccolod_gate_outcomes_total", outcome="passed") == 0
    assert run.sample("piccolod_gate_failure_class", component="tpm", **{"class": "pre_existing"}) == 1
    assert run.health()["gate_failures"][0]["class"] == "pre_existing"
    gate = journal.read(tmp_path / "state").boot
    assert gate is not None and gate.verdict is GateVerdict.PASSED and gate.failures
    assert pin.read() is None


def test_fail_holds_a_pre_existing_failure(tmp_path: Path, flatcar_disk: Path, agent: Any) -> None:
    updated(tmp_path, flatcar_disk)
    baseline(tmp_path, "failed")
    run = agent(False, "fail")
    wait_for(lambda: run.health()["startup_health_check"] == "failed", what="the failed verdict")
    assert run.sample("piccolod_gate_failure_class", component="tpm", **{"class": "pre_existing"}) == 1
    assert not (tmp_path / "run" / "gate-passed").exists()


def test_a_passing_update_releases_the_pin(tmp_path: Path, flatcar_disk: Path, agent: Any) -> None:
    pin.pin("3975.2.0", "failed its gate")
    updated(tmp_path, flatcar_disk)
    run = agent(True)
    assert run.health()["startup_health_check"] == "passed"
    assert pin.read() is None and run.sample("piccolod_update_pinned") == 0
    assert run.health()["update_pin"] is None


def test_the_fallback_boot_pins_when_the_failing_boot_could_not(
    tmp_path: Path, flatcar_disk: Path, agent: Any
) -> None:
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-A, marked
    Store(tmp_path / "state").put(Journal(rollback=record(boot_id="an-earlier-boot", os_version="3975.2.0")))
    run = agent(True)
    assert run.health()["update_status"] == "rolled_back"
    found = pin.read()
    assert found is not None and found.version == "3975.2.0"
    assert run.sample("piccolod_update_pinned") == 1
    pin.unpin()  # the operator clears it: a restarted agent (the same record) does not pin it again
    run.daemon.stop()
    run.thread.join(10)
    agent(True)
    assert pin.read() is None
