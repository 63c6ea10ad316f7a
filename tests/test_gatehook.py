"""The gate inside the real Daemon: API fields, metrics, the rollback report, the pass token, READY=1."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from piccolod import journal
from piccolod.api import listen_socket
from piccolod.assess import Assessor
from piccolod.commands.serve import load_default_policy
from piccolod.daemon import Daemon, GateHook, RefreshHook
from piccolod.gatehook import first_boot_gate, refresh_machine
from piccolod.journal import GateVerdict, Journal, Store
from piccolod.model import Source, build
from piccolod.policy import Component, PolicyFile
from tests.agent_helpers import FACTS, Switch, gate_agent, get, wait_for
from tests.fixtures.gptdisk import (
    USR_A,
    USR_B,
    cmdline_for,
    gptprio_next,
    install_update,
    setgoodroot,
)
from tests.test_journal import record
from tests.test_metrics import value


def policy(tmp_path: Path, disk: Path, port: int, timeout: float = 0.6, interval: float = 60.0) -> PolicyFile:
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
            "runtime": {"check_interval_seconds": interval},
            "rollback": {"reboot_grace_seconds": 0.3, "reboot_command": [str(script)]},
        },
        "agent": gate_agent(tmp_path, port, disk),
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

    def sample(self, name: str, **labels: str) -> float:
        return value(get(self.port, "/metrics")[2].decode(), name, **labels)

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def start(tmp_path: Path, flatcar_disk: Path) -> Iterator[Any]:
    started: list[Running] = []

    def go(
        tpm: Switch,
        *,
        timeout: float = 0.6,
        gate: GateHook | None = None,
        boot_id: str = FACTS.boot_id,
        interval: float = 60.0,
        refresh: RefreshHook | None = None,
    ) -> Running:
        (tmp_path / "run").mkdir(exist_ok=True)
        listener = listen_socket("127.0.0.1:0")
        port = listener.getsockname()[1]
        daemon = Daemon(
            policy(tmp_path, flatcar_disk, port, timeout, interval),
            assessor=Assessor({Component.TPM: tpm}, lambda c, p: 1.0),
            gate=gate or kicked_gate([]),  # never the host's systemctl
            listener=listener,
            facts=replace(FACTS, boot_id=boot_id),
            env={"RUNTIME_DIRECTORY": str(tmp_path / "run")},
            refresh=refresh,
            refresh_seconds=0.05,
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


def kicked_gate(kicks: list[bool]) -> GateHook:
    """The gate hook with update-engine's start recorded (and whether READY=1 came first)."""

    def gate(d: Daemon) -> None:
        first_boot_gate(d, start_update_engine=lambda: kicks.append(d.is_ready.is_set()))

    return gate


def rebooted(tmp_path: Path) -> bool:
    """The reboot command's record is there and written (its shell creates the file before writing)."""
    path = tmp_path / "reboots"
    return path.exists() and path.read_text().endswith("\n")


def token(tmp_path: Path) -> str | None:
    path = tmp_path / "run" / "gate-passed"
    return path.read_text().strip() if path.exists() else None


def test_fallback_boot_reports_rolled_back(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-A, marked
    Store(tmp_path / "state").put(Journal(rollback=record(boot_id="an-earlier-boot")))
    kicks: list[bool] = []
    run = start(Switch(False), gate=kicked_gate(kicks))
    assert run.daemon.is_ready.wait(5)  # marked: ready at once, though the TPM fails
    doc = run.health()
    assert doc["update_status"] == "rolled_back"
    assert doc["rollback_reason"].startswith("USR-B rolled back: critical_component_failure")
    assert doc["startup_health_check"] == "skipped"
    assert run.metric("piccolod_rollbacks_total ") == 1
    assert run.metric('piccolod_gate_outcomes_total{outcome="skipped"}') == 1
    assert token(tmp_path) == FACTS.boot_id  # the guard may let update-engine go (it would anyway)
    assert kicks == []  # a marked slot: the guard needs no help, and an admin's stop is respected


def test_pass_writes_the_token_then_ready_then_asks_for_update_engine(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-B, unmarked
    kicks: list[bool] = []
    run = start(Switch(True), gate=kicked_gate(kicks))
    assert run.daemon.is_ready.wait(5)
    wait_for(lambda: kicks == [True], what="update-engine asked for after READY=1")
    assert token(tmp_path) == FACTS.boot_id
    assert (tmp_path / "run" / "gate-passed").stat().st_mode & 0o777 == 0o600
    assert run.health()["startup_health_check"] == "passed"
    b = journal.read(tmp_path / "state").boot
    assert b is not None and b.verdict is GateVerdict.PASSED and b.boot_id == FACTS.boot_id


def test_failed_gate_is_pending_then_failed_and_the_agent_stays_up(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-B, unmarked
    kicks: list[bool] = []
    run = start(Switch(False), timeout=1.5, gate=kicked_gate(kicks))
    wait_for(lambda: run.daemon.server is not None, what="API")
    assert run.health()["startup_health_check"] == "pending"
    wait_for(lambda: run.health()["startup_health_check"] == "failed", timeout=5, what="failed verdict")
    assert run.daemon.is_ready.wait(5)  # READY=1 says "verdict given", not "healthy"
    wait_for(lambda: rebooted(tmp_path), what="the reboot")
    assert run.thread.is_alive() and run.error is None  # up, serving the failure
    assert (tmp_path / "reboots").read_text() == "requested\n"
    assert token(tmp_path) is None and kicks == []
    j = journal.read(tmp_path / "state")
    assert j.rollback is not None and j.rollback.slot == "USR-B" and j.rollback.boot_id == FACTS.boot_id
    assert j.boot is not None and j.boot.verdict is GateVerdict.FAILED and j.boot.reboot_requested


def test_restart_in_the_same_boot_keeps_the_verdict(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    first = start(Switch(True))
    assert first.daemon.is_ready.wait(5)
    assert first.health()["startup_health_check"] == "passed"
    first.daemon.stop()
    first.thread.join(10)
    (tmp_path / "run" / "gate-passed").unlink()
    kicks: list[bool] = []
    second = start(Switch(False), gate=kicked_gate(kicks))  # same boot id: no second gate, the pass stands
    assert second.daemon.is_ready.wait(5)
    assert second.health()["startup_health_check"] == "passed"
    assert token(tmp_path) == FACTS.boot_id and kicks == [True]  # token again; update-engine (a no-op)
    assert not (tmp_path / "reboots").exists()


def test_a_failed_verdict_stands_for_every_restart_of_this_boot(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    first = start(Switch(False), timeout=0.3)
    wait_for(lambda: rebooted(tmp_path), what="the reboot")
    first.daemon.stop()
    first.thread.join(10)
    for _ in range(3):  # Restart=, an administrator's systemctl start, ...
        again = start(Switch(True))  # even a healthy machine now: the verdict of this boot is final
        assert again.daemon.is_ready.wait(5)
        assert again.health()["startup_health_check"] == "failed"
        again.daemon.stop()
        again.thread.join(10)
    assert (tmp_path / "reboots").read_text() == "requested\n" and token(tmp_path) is None


def test_a_gate_in_progress_is_in_the_journal_with_its_deadline(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    run = start(Switch(False), timeout=30)
    path = tmp_path / "state" / journal.JOURNAL_NAME
    wait_for(path.exists, what="the journal")
    b = journal.read(tmp_path / "state").boot
    assert b is not None and (b.boot_id, b.partuuid, b.verdict) == (FACTS.boot_id, USR_B, None)
    assert b.deadline_monotonic - b.started_monotonic == pytest.approx(30)  # a difference of floats
    run.daemon.stop()


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"[" * 100_000, "fifo"])
def test_a_hostile_journal_never_blocks_a_marked_slot(
    tmp_path: Path, flatcar_disk: Path, start: Any, bad: bytes | str
) -> None:
    (tmp_path / "cmdline").write_text(cmdline_for(USR_A))  # marked
    state = tmp_path / "state"
    state.mkdir()
    if bad == "fifo":
        os.mkfifo(state / journal.JOURNAL_NAME)
    else:
        assert isinstance(bad, bytes)
        (state / journal.JOURNAL_NAME).write_bytes(bad)
    run = start(Switch(False))
    assert run.daemon.is_ready.wait(5)
    assert run.health()["startup_health_check"] == "skipped" and token(tmp_path) == FACTS.boot_id


def test_a_hostile_journal_fails_closed_on_an_unmarked_slot(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    """The journal is unreadable: the agent gates as if no gate had begun (no pass without checks)."""
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / journal.JOURNAL_NAME)
    run = start(Switch(False), timeout=0.5)
    wait_for(lambda: run.health()["startup_health_check"] == "failed", timeout=5, what="failed verdict")
    assert token(tmp_path) is None
    assert journal.read(state).boot is not None  # the FIFO was replaced by a journal


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


# --- what the fleet sees (docs/monitoring.md) ---------------------------------------------------------


def boot(tmp_path: Path, disk: Path, start: Any, boot_id: str, tpm: Switch) -> Running:
    """One boot of the machine: GRUB's choice written to the command line, the agent to its verdict."""
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(disk)))
    run: Running = start(tpm, boot_id=boot_id, timeout=0.3)
    wait_for(lambda: run.health()["startup_health_check"] != "pending", timeout=5, what="the verdict")
    return run


def test_two_rollback_boots_in_a_row_count_two_and_move_the_timestamp(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    """The same update fails twice: each fallback boot counts its rollback once, from the journal, so
    the counter reads 1 then 2 across the reboots (an in-process counter would read 1 both times)."""
    install_update(flatcar_disk, USR_A)
    first = boot(tmp_path, flatcar_disk, start, "boot-1", Switch(False))  # USR-B fails its gate
    assert first.health()["startup_health_check"] == "failed"
    assert first.sample("piccolod_rollbacks_total") == 0
    wait_for((tmp_path / "reboots").exists, what="the reboot")
    first.stop()
    failed_1 = journal.read(tmp_path / "state").rollbacks
    record_1 = journal.read(tmp_path / "state").rollback
    assert record_1 is not None and failed_1.count == 0

    second = boot(tmp_path, flatcar_disk, start, "boot-2", Switch(True))  # GRUB falls back to USR-A
    assert second.health()["update_status"] == "rolled_back"
    assert second.sample("piccolod_rollbacks_total") == 1
    assert second.sample("piccolod_last_rollback_timestamp_seconds") == record_1.failed_at
    second.stop()
    again = boot(tmp_path, flatcar_disk, start, "boot-2", Switch(True))  # a restart in the same boot
    assert again.sample("piccolod_rollbacks_total") == 1  # the same record is never counted twice
    again.stop()

    time.sleep(0.01)  # the second failure is later than the first, whatever the clock's resolution
    install_update(flatcar_disk, USR_A)  # update-engine installs the same version again
    third = boot(tmp_path, flatcar_disk, start, "boot-3", Switch(False))
    assert third.health()["startup_health_check"] == "failed"
    assert third.sample("piccolod_rollbacks_total") == 1  # the failing boot exports what came before
    wait_for(lambda: (tmp_path / "reboots").read_text().count("requested") == 2, what="the second reboot")
    third.stop()
    record_3 = journal.read(tmp_path / "state").rollback
    assert record_3 is not None and record_3.boot_id == "boot-3"

    fourth = boot(tmp_path, flatcar_disk, start, "boot-4", Switch(True))
    assert fourth.health()["update_status"] == "rolled_back"
    assert fourth.sample("piccolod_rollbacks_total") == 2
    last = fourth.sample("piccolod_last_rollback_timestamp_seconds")
    assert last == record_3.failed_at > record_1.failed_at
    tally = journal.read(tmp_path / "state").rollbacks
    assert (tally.count, tally.last_at, tally.last_boot_id) == (2, record_3.failed_at, "boot-3")


def test_a_dry_run_counts_nothing(tmp_path: Path, flatcar_disk: Path) -> None:
    (tmp_path / "cmdline").write_text(cmdline_for(USR_A))  # marked: the fallback boot
    Store(tmp_path / "state").put(Journal(rollback=record(boot_id="an-earlier-boot")))
    daemon = Daemon(policy(tmp_path, flatcar_disk, 1), facts=FACTS, env={}, bind=False)
    assert first_boot_gate(daemon, dry_run=True).passed
    assert journal.read(tmp_path / "state").rollbacks.count == 0


def test_the_gate_is_pending_with_its_deadline_then_not(
    tmp_path: Path, flatcar_disk: Path, start: Any
) -> None:
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))  # USR-B, unmarked
    tpm = Switch(False)
    before = time.time()
    run = start(tpm, timeout=30)
    wait_for(lambda: run.daemon.server is not None, what="API")
    wait_for(lambda: run.sample("piccolod_gate_pending") == 1, what="the gate pending")
    deadline = run.sample("piccolod_gate_deadline_timestamp_seconds")
    assert before + 30 <= deadline <= time.time() + 30
    assert run.sample("piccolod_slot_successful", slot="USR-B") == 0
    assert run.sample("piccolod_slot_tries", slot="USR-B") == 0  # GRUB took its one try
    assert run.sample("piccolod_slot_priority", slot="USR-B") == 2
    assert run.sample("piccolod_slot_successful", slot="USR-A") == 1
    tpm.healthy = True
    assert run.daemon.is_ready.wait(5)
    wait_for(lambda: run.sample("piccolod_gate_pending") == 0, what="the gate's verdict")
    assert run.sample("piccolod_gate_outcomes_total", outcome="passed") == 1
    assert run.sample("piccolod_gate_deadline_timestamp_seconds") == deadline


def test_a_marked_slot_has_no_pending_gate(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    (tmp_path / "cmdline").write_text(cmdline_for(USR_A))
    run = start(Switch(True))
    assert run.daemon.is_ready.wait(5)
    assert run.sample("piccolod_gate_pending") == 0
    assert run.sample("piccolod_gate_deadline_timestamp_seconds") == 0
    assert run.sample("piccolod_gate_outcomes_total", outcome="skipped") == 1


def test_the_refresh_sees_the_slot_marked_good(tmp_path: Path, flatcar_disk: Path, start: Any) -> None:
    """update-engine marks the slot 45 s after it starts: a running agent's metrics follow the disk."""
    install_update(flatcar_disk, USR_A)
    (tmp_path / "cmdline").write_text(cmdline_for(gptprio_next(flatcar_disk)))
    run = start(Switch(True), interval=0.05, refresh=refresh_machine)
    assert run.daemon.is_ready.wait(5)
    assert run.sample("piccolod_slot_successful", slot="USR-B") == 0
    setgoodroot(flatcar_disk, USR_B)  # what flatcar-setgoodroot does for update-engine
    wait_for(lambda: run.sample("piccolod_slot_successful", slot="USR-B") == 1, what="the refreshed table")
    assert run.sample("piccolod_slot_priority", slot="USR-A") == 1
