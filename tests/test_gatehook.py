"""The gate inside the real Daemon: API fields, metrics, the rollback report and the exit on failure."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piccolod import record as rec
from piccolod.api import listen_socket
from piccolod.assess import Assessor
from piccolod.commands.serve import load_default_policy
from piccolod.daemon import Daemon, GateHook
from piccolod.gatehook import LAST_GATE_NAME, STARTS_NAME, GateClosed, first_boot_gate, own_unit, serve_hook
from piccolod.model import Source, build
from piccolod.policy import Component, PolicyFile
from tests.agent_helpers import FACTS, Switch, get, wait_for
from tests.fixtures.gptdisk import USR_A, USR_B, cmdline_for, gptprio_next, install_update


def policy(tmp_path: Path, disk: Path, port: int, timeout: float = 0.6) -> PolicyFile:
    script = tmp_path / "reboot"
    script.write_text(f"#!/bin/sh\necho requested >> {tmp_path}/reboots\n")
    script.chmod(0o755)
    data: dict[str, Any] = {
        "health_policy": {
            "startup": {
                "timeout_seconds": timeout,
                "required_components": ["tpm"],
                "optional_components": [],
            },
            "rollback": {"reboot_grace_seconds": 0.3, "reboot_command": [str(script)]},
        },
        "agent": {
            "listen": f"127.0.0.1:{port}",
            "state_dir": str(tmp_path / "state"),
            "boot": {"cmdline": str(tmp_path / "cmdline"), "disk": str(disk)},
        },
    }
    return build(PolicyFile, data, Source("<test>"))


class Running:
    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon, self.port = daemon, port
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as e:  # handed to the test
            self.error = e

    def health(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(get(self.port, "/api/v1/system/health")[2])
        return doc

    def metric(self, line_start: str) -> float:
        text = get(self.port, "/metrics")[2].decode()
        return float(next(ln for ln in text.splitlines() if ln.startswith(line_start)).rsplit(" ", 1)[1])


@pytest.fixture
def start(tmp_path: Path, flatcar_disk: Path) -> Iterator[Any]:
    started: list[Running] = []

    def go(tpm: Switch, *, timeout: float = 0.6, gate: GateHook = serve_hook) -> Running:
        listener = listen_socket("127.0.0.1:0")
        port = listener.getsockname()[1]
        daemon = Daemon(
            policy(tmp_path, flatcar_disk, port, timeout),
            assessor=Assessor({Component.TPM: tpm}, lambda c, p: 1.0),
            gate=gate,
            listener=listener,
            facts=FACTS,
            env={},
        )
        run = Running(daemon, port)
        run.thread.start()
        started.append(run)
        return run

    yield go
    for run in started:
        run.daemon.stop()
        run.thread.join(10)
        assert not run.thread.is_alive()


def test_fallback_boot_reports_rolled_back(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-A, marked
    earlier = rec.RollbackRecord(
        "an-earlier-boot", "USR-B", USR_B, "/dev/vda", "1.2.3", "critical_component_failure",
        "required components failing: tpm", 1.0, 2.0, 120.0, 3, True,
    )  # fmt: skip
    rec.write(tmp_path / "state", earlier)
    run = start(Switch(False))
    assert run.daemon.is_ready.wait(5)  # marked: ready at once, though the TPM fails
    doc = run.health()
    assert doc["update_status"] == "rolled_back"
    assert doc["rollback_reason"].startswith("USR-B rolled back: critical_component_failure")
    assert doc["startup_health_check"] == "skipped"
    assert run.metric("piccolod_rollbacks_total ") == 1
    assert run.metric('piccolod_gate_outcomes_total{outcome="skipped"}') == 1


def test_failed_gate_is_pending_then_failed_then_closed(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-B, unmarked
    run = start(Switch(False), timeout=1.5)
    wait_for(lambda: run.daemon.server is not None, what="API")
    assert run.health()["startup_health_check"] == "pending"
    wait_for(lambda: run.health()["startup_health_check"] == "failed", timeout=5, what="failed verdict")
    run.thread.join(10)
    assert isinstance(run.error, GateClosed)
    assert not run.daemon.is_ready.is_set()
    assert (tmp_path / "reboots").read_text() == "requested\n"
    record = rec.read(tmp_path / "state")
    assert record is not None and record.slot == "USR-B" and record.boot_id == FACTS.boot_id


def test_restart_in_the_same_boot_keeps_the_verdict(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    first = start(Switch(True))
    assert first.daemon.is_ready.wait(5)
    assert first.health()["startup_health_check"] == "passed"
    first.daemon.stop()
    first.thread.join(10)
    second = start(Switch(False))  # same boot id: no second gate, the pass stands
    assert second.daemon.is_ready.wait(5)
    assert second.health()["startup_health_check"] == "passed"
    assert not (tmp_path / "reboots").exists()


@pytest.mark.parametrize(
    ("earlier_boot", "earlier", "kicked"),
    [
        (FACTS.boot_id, {"startup_health_check": "pending"}, True),  # crashed mid-gate
        (FACTS.boot_id, {"startup_health_check": "passed", "ready_sent": False}, True),  # before READY=1
        (FACTS.boot_id, {"startup_health_check": "passed", "ready_sent": True}, False),  # after it
        ("another-boot", {"startup_health_check": "pending"}, False),
    ],
)
def test_pass_after_an_unfinished_gate_starts_update_engine(
    tmp_path: Path, flatcar_disk: Path, start: Any, earlier_boot: str, earlier: dict[str, Any], kicked: bool
) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    unfinished = {"boot_id": earlier_boot, "partuuid": USR_B, **earlier}
    rec.write_json_atomic(tmp_path / "state" / LAST_GATE_NAME, unfinished)  # what the crashed agent left
    kicks: list[bool] = []

    def gate(d: Daemon) -> None:
        first_boot_gate(d, after_interrupted_pass=lambda: kicks.append(d.is_ready.is_set()))

    run = start(Switch(True), gate=gate)
    assert run.daemon.is_ready.wait(5)
    path = tmp_path / "state" / LAST_GATE_NAME
    wait_for(
        lambda: json.loads(path.read_text()).get("ready_sent") is True, what="ready_sent"
    )  # the last step
    assert kicks == ([True] if kicked else [])  # only after READY=1, only for this boot's attempt
    last = json.loads(path.read_text())
    assert last["startup_health_check"] == "passed" and last["boot_id"] == FACTS.boot_id
    assert run.health()["startup_health_check"] == "passed"


def test_a_gate_in_progress_says_pending_in_last_gate(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    run = start(Switch(False), timeout=30)
    path = tmp_path / "state" / LAST_GATE_NAME
    wait_for(path.exists, what="last-gate.json")
    last = json.loads(path.read_text())
    assert (last["startup_health_check"], last["boot_id"], last["partuuid"]) == (
        "pending",
        FACTS.boot_id,
        USR_B,
    )
    run.daemon.stop()


@pytest.mark.parametrize(
    ("earlier", "kicked"),
    [
        ({"boot_id": FACTS.boot_id, "ready_sent": False}, True),  # crashed/killed before READY=1
        ({"boot_id": FACTS.boot_id, "ready_sent": True}, False),  # a clean restart after READY=1
        ({"boot_id": "another-boot", "ready_sent": False}, False),
        (None, False),  # the first start of this boot
    ],
)
def test_marked_slot_after_a_start_that_never_got_ready_starts_update_engine(
    tmp_path: Path, flatcar_disk: Path, start: Any, earlier: dict[str, Any] | None, kicked: bool
) -> None:
    """Never block a marked slot: update-engine's start job failed with an earlier start of this boot."""
    (tmp_path / "cmdline").write_text(cmdline_for(USR_A))  # marked
    if earlier is not None:
        rec.write_json_atomic(tmp_path / "state" / STARTS_NAME, earlier)
    kicks: list[bool] = []

    def gate(d: Daemon) -> None:
        first_boot_gate(d, after_interrupted_pass=lambda: kicks.append(d.is_ready.is_set()))

    run = start(Switch(False), gate=gate)  # the TPM fails: a marked slot is ready anyway
    assert run.daemon.is_ready.wait(5)
    path = tmp_path / "state" / STARTS_NAME
    wait_for(lambda: json.loads(path.read_text()).get("ready_sent") is True, what="ready_sent")
    assert kicks == ([True] if kicked else [])
    assert json.loads(path.read_text())["boot_id"] == FACTS.boot_id


def test_a_start_that_ends_before_ready_is_remembered(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-B, unmarked
    run = start(Switch(False), timeout=30)
    path = tmp_path / "state" / STARTS_NAME
    wait_for(path.exists, what=STARTS_NAME)
    run.daemon.stop()  # stopped mid-gate: no READY=1
    run.thread.join(10)
    data = json.loads(path.read_text())
    assert (data["boot_id"], data["ready_sent"]) == (FACTS.boot_id, False)


def test_own_unit_from_the_cgroup_file(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    cg.write_text("0::/system.slice/piccolod.service\n")
    assert own_unit(cg) == "piccolod.service"
    cg.write_text("0::/user.slice/user-0.slice/session-3.scope\n")
    assert own_unit(cg) is None
    assert own_unit(tmp_path / "absent") is None


def test_a_bad_admin_policy_falls_back_to_the_vendor_one_and_says_so(tmp_path: Path) -> None:
    vendor, admin = tmp_path / "vendor.yaml", tmp_path / "admin.yaml"
    vendor.write_text("agent:\n  listen: 127.0.0.1:9999\n")
    admin.write_text("health_policy:\n  runtime:\n    failure_treshold: 3\n")  # the typo
    policy, error = load_default_policy(vendor=vendor, admin=admin)
    assert policy.agent.listen == "127.0.0.1:9999"
    assert error is not None and error.startswith(f"{admin}:3: health_policy.runtime.failure_treshold")
    vendor.write_text("agent:\n  listen: nowhere\n")  # the vendor file is bad too: built-in defaults
    policy, error = load_default_policy(vendor=vendor, admin=admin)
    assert policy == PolicyFile()
    assert error is not None and f"{vendor}:2: agent.listen" in error
    admin.unlink()
    vendor.write_text("agent:\n  listen: 127.0.0.1:9998\n")
    assert load_default_policy(vendor=vendor, admin=admin) == (
        build(PolicyFile, {"agent": {"listen": "127.0.0.1:9998"}}, Source("v")),
        None,
    )


def test_the_health_document_reports_a_policy_error(tmp_path: Path) -> None:
    daemon = Daemon(PolicyFile(), facts=FACTS, env={}, bind=False, policy_error="admin.yaml:3: x: bad")
    assert daemon.state.document["policy_error"] == "admin.yaml:3: x: bad"
    assert daemon.start_api() is None
    assert "policy_error" not in Daemon(PolicyFile(), facts=FACTS, env={}, bind=False).state.document
