"""The first-boot gate wired into the daemon: ``piccolod serve``'s gate hook and ``piccolod gate``.

:func:`first_boot_gate` reads the booted slot, reports a rollback found from an earlier boot
(``update_status: rolled_back``, ``piccolod_rollbacks_total``), runs :func:`piccolod.gate.run_gate` with
the daemon's own assessments (no hysteresis: the gate judges what the checks answer), publishes
``startup_health_check`` and the gate outcome metric, writes ``last-gate.json``, and either sends
``READY=1`` or raises :class:`GateClosed`, which ``piccolod serve`` turns into exit status 3 (the unit's
``RestartPreventExitStatus=``: a failed gate is never restarted into a second gate).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from piccolod import record as rec
from piccolod.gate import GateResult, Interrupted, run_gate
from piccolod.metrics import GateOutcome
from piccolod.policy import FailureCondition, PolicyFile
from piccolod.slot import BootSlot, SlotState, detect

if TYPE_CHECKING:
    from piccolod.daemon import Daemon

log = logging.getLogger("piccolod.gate")


LAST_GATE_NAME = "last-gate.json"


class GateClosed(Exception):
    """The gate failed: ``piccolod serve`` exits with :data:`EXIT_GATE_FAILED`, never sending READY=1."""


EXIT_GATE_FAILED = 3  # the unit's RestartPreventExitStatus=: no second gate in this boot


def detect_slot(policy: PolicyFile) -> BootSlot:
    boot = policy.agent.boot
    return detect(boot.cmdline, boot.disk)


def first_boot_gate(daemon: Daemon, *, dry_run: bool = False) -> GateResult | None:
    """The gate as :class:`~piccolod.daemon.Daemon`'s hook: slot, rollback report, verdict, READY=1.

    Raises :class:`GateClosed` when the gate fails (after the record and any reboot request); returns
    None when the agent was told to stop during the gate (no verdict, no READY=1).
    """
    policy = daemon.policy
    state_dir = Path(policy.agent.state_dir)
    boot_id = daemon.facts.boot_id
    slot = detect_slot(policy)
    log.info(
        "booted slot: %s %s (%s)%s",
        slot.name,
        slot.partuuid,
        slot.state,
        f": {slot.error}" * bool(slot.error),
    )
    _report_rollback(daemon, slot, state_dir, boot_id)

    def publish(result: GateResult) -> None:  # as soon as the verdict is known, before any reboot grace
        daemon.state.update(startup_health_check=result.startup_health_check)
        daemon.metrics.gate_outcome(_outcome(result))
        _write_last_gate(state_dir, result, boot_id)

    gated_known = slot.state is SlotState.UNMARKED and not dry_run
    earlier = _verdict_of_this_boot(state_dir, boot_id, slot) if gated_known else None
    if earlier is not None:  # restarted (Restart=, Upholds=): the verdict of this boot stands
        daemon.state.update(startup_health_check=earlier)
        if earlier == "passed":
            daemon.ready("gate passed earlier in this boot")
            return None
        raise GateClosed("gate already failed in this boot: not gating (or rebooting) again")
    if slot.state is not SlotState.MARKED:
        daemon.state.update(startup_health_check="pending")
    try:
        result = run_gate(
            policy,
            slot,
            lambda: daemon.assess(hysteresis=False),
            notify=daemon.notify,
            boot_id=boot_id,
            dry_run=dry_run,
            sleep=daemon.sleep,
            on_verdict=None if dry_run else publish,
        )
    except Interrupted as e:
        log.warning("gate ended without a verdict: %s", e)
        return None
    if dry_run:
        return result
    if result.ready:
        daemon.ready(f"gate {result.startup_health_check}: {result.verdict.reason}")
        return result
    raise GateClosed(f"gate failed: {result.verdict.condition}: {result.verdict.reason}")


def _verdict_of_this_boot(state_dir: Path, boot_id: str, slot: BootSlot) -> str | None:
    """``passed``/``failed`` if a gate of this boot already judged this slot, else None."""
    try:
        last = json.loads((state_dir / LAST_GATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(last, dict) or last.get("boot_id") != boot_id or last.get("partuuid") != slot.partuuid:
        return None
    verdict = last.get("startup_health_check")
    return verdict if verdict in ("passed", "failed") else None


def _report_rollback(daemon: Daemon, slot: BootSlot, state_dir: Path, boot_id: str) -> None:
    try:
        record = rec.read(state_dir)
    except rec.RecordError as e:
        log.error("%s", e)  # noqa: TRY400 - the message is the whole story
        return
    status = rec.update_status(record, slot, boot_id)
    if status is None or record is None:
        return
    log.warning("this boot is a rollback: %s", status[1])
    daemon.state.update(update_status=status[0], rollback_reason=status[1], rollback_record=record.to_json())
    daemon.metrics.rollback()


def _outcome(result: GateResult) -> GateOutcome:
    if result.slot.state is SlotState.MARKED:
        return GateOutcome.SKIPPED
    if result.ready:
        return GateOutcome.PASSED
    if result.verdict.condition is FailureCondition.STARTUP_TIMEOUT:
        return GateOutcome.TIMEOUT
    return GateOutcome.FAILED


def _write_last_gate(state_dir: Path, result: GateResult, boot_id: str) -> None:
    data = {
        "boot_id": boot_id,
        "slot": result.slot.name,
        "partuuid": result.slot.partuuid,
        "slot_state": str(result.slot.state),
        "startup_health_check": result.startup_health_check,
        "decision": str(result.verdict.decision),
        "condition": str(result.verdict.condition) if result.verdict.condition else None,
        "reason": result.verdict.reason,
        "attempts": result.attempts,
        "elapsed_seconds": round(result.elapsed, 3),
        "reboot_planned": result.verdict.reboot,
        "finished_at": time.time(),
    }
    try:
        rec.write_json_atomic(state_dir / LAST_GATE_NAME, data)
    except OSError as e:
        log.error("cannot write %s: %s", state_dir / LAST_GATE_NAME, e)  # noqa: TRY400


def serve_hook(daemon: Daemon) -> None:
    """``piccolod serve``'s gate hook (:data:`piccolod.daemon.GateHook`)."""
    first_boot_gate(daemon)
