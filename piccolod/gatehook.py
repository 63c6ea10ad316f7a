"""The first-boot gate wired into the daemon: ``piccolod serve``'s gate hook and ``piccolod gate``.

:func:`first_boot_gate` reads the booted slot and the journal, reports a rollback found from an earlier
boot (``update_status: rolled_back``; counted once in the journal's rollback tally, which
``piccolod_rollbacks_total`` and ``piccolod_last_rollback_timestamp_seconds`` export), publishes the slot
table and the gate's deadline while it is pending, runs :func:`piccolod.gate.run_gate` with the daemon's
own assessments (no hysteresis: the gate judges what the checks answer; every check whose ``run_on`` has
the gate runs in parallel, and an attempt stops waiting at the first required failure, the others
reported ``cancelled``), publishes
``startup_health_check`` and the gate outcome metric, and then tells systemd and the guard:

- **passed** (or ``skipped`` on a marked slot): the pass token for the guard (:mod:`piccolod.passtoken`),
  ``READY=1``, and on a slot that is not marked ``systemctl start --no-block update-engine.service``
  (:func:`piccolod.manager.start_update_engine`: a no-op when the guard already let it start, needed
  when the guard gave up before a late pass);
- **failed**: no token, ever, in this boot. ``READY=1`` with a ``STATUS=`` saying why, and the agent
  stays up serving the failure through its API (after the one reboot the verdict asked for, if any).
  ``READY=1`` no longer means "healthy": the guard reads the token, not the unit state. So no restart,
  ``Upholds=`` or ``systemctl start`` can run a second gate in this boot: the journal holds the verdict.

An attempt stopped before its verdict (SIGTERM) sends nothing; the next start resumes the same gate with
the same deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from piccolod import logs, manager, osinfo, passtoken, updatehook
from piccolod import record as rec
from piccolod.checkspec import Phase
from piccolod.gate import GateResult, Interrupted, Reboot, no_reboot_reason, run_gate
from piccolod.journal import BootGate, Store
from piccolod.metrics import GateOutcome
from piccolod.policy import FailureCondition, PolicyFile
from piccolod.slot import BootSlot, SlotState, detect

if TYPE_CHECKING:
    from collections.abc import Callable

    from piccolod.daemon import Daemon

log = logging.getLogger("piccolod.gate")


@dataclass(frozen=True)
class Outcome:
    """What the gate hook ended with; ``result`` is None when the agent was stopped mid-gate."""

    result: GateResult | None
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.ready


def detect_slot(policy: PolicyFile) -> BootSlot:
    boot = policy.agent.boot
    return detect(boot.cmdline, boot.usr_device)


def first_boot_gate(
    daemon: Daemon,
    *,
    dry_run: bool = False,
    start_update_engine: Callable[[], object] = manager.start_update_engine,
    reboot: Reboot = manager.run_reboot,
) -> Outcome:
    """The gate as :class:`~piccolod.daemon.Daemon`'s hook: slot, rollback report, verdict, token, READY."""
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
    if slot.gpt_header == "backup":
        log.warning("%s: %s", slot.disk, slot.gpt_note)
    daemon.metrics.machine(slot=slot)
    store = Store.load(state_dir)
    _report_rollback(daemon, slot, store, boot_id, count=not dry_run)
    updatehook.publish_pin(daemon)
    if slot.state is not SlotState.MARKED:
        daemon.state.update(startup_health_check="pending")

    def begin(gate: BootGate) -> None:
        daemon.metrics.gate_begins(gate.deadline_at)

    def publish(result: GateResult) -> None:  # as soon as the verdict is known, before any reboot grace
        classified = result.verdict.classified
        daemon.state.update(
            startup_health_check=result.startup_health_check,
            extra={
                "gate_failures": [
                    {"component": c.component, "class": str(c.failure_class), "reason": c.reason}
                    for c in classified
                ]
            },
        )
        daemon.metrics.gate_outcome(_outcome(result))
        daemon.metrics.gate_failures(classified)
        logs.log_classified(classified, boot_id)
        if result.verdict.warned:
            log.critical("gate WARNED on %s: %s", slot.name, result.verdict.reason)
        if dry_run or result.earlier:
            pass
        elif not result.ready and slot.state is not SlotState.MARKED:
            updatehook.pin_failed_version(
                rec.os_version(), f"failed its first-boot gate on {slot.name or 'the booted slot'}"
            )
            updatehook.publish_pin(daemon)
        elif result.ready and slot.state is SlotState.UNMARKED:
            updatehook.release_pin(f"{rec.os_version() or 'this version'} passed its first-boot gate")
            updatehook.publish_pin(daemon)
        if not result.ready and not dry_run:
            daemon.ready(f"gate failed ({result.verdict.condition}): {result.verdict.reason}")

    try:
        result = run_gate(
            policy,
            slot,
            lambda: daemon.assess(hysteresis=False, phase=Phase.GATE, stop_on_required_failure=True),
            notify=daemon.notify,
            boot_id=boot_id,
            store=store,
            dry_run=dry_run,
            sleep=daemon.sleep,
            on_begin=begin,
            on_verdict=publish,
            reboot=reboot,
        )
    except Interrupted as e:
        log.warning("gate ended without a verdict: %s", e)
        return Outcome(None, f"gate ended without a verdict: {e}")
    if dry_run:
        return Outcome(result)
    if result.ready:
        _open(daemon, result, boot_id, start_update_engine)
        return Outcome(result)
    rollback = policy.health_policy.rollback
    enabled = result.verdict.condition in rollback.failure_conditions
    why = None if result.verdict.reboot else no_reboot_reason(rollback.enable_automatic, slot.state, enabled)
    text = f"gate failed: {result.verdict.condition}: {result.verdict.reason}" + f"; {why}" * bool(why)
    if result.earlier:
        text = "gate already failed in this boot, not gating (or rebooting) again: " + text
    daemon.notify(f"STATUS={text}")
    return Outcome(result, text)


def _open(
    daemon: Daemon, result: GateResult, boot_id: str, start_update_engine: Callable[[], object]
) -> None:
    """The token for the guard, READY=1, and update-engine asked for on a slot that is not marked."""
    token = passtoken.token_path(daemon.env)
    try:
        passtoken.write(token, boot_id)
    except OSError as e:
        # Without the token the guard keeps update-engine back: fail closed, and say so loudly.
        log.critical("cannot write the pass token %s: %s; update-engine stays blocked", token, e.strerror)
    else:
        if not passtoken.passed(token, boot_id):  # what the guard will see: read it back the same way
            log.critical(
                "the pass token %s does not read back as this boot's; update-engine stays blocked", token
            )
    when = "earlier in this boot" if result.earlier else f"after {result.elapsed:.2f}s"
    daemon.ready(f"gate {result.startup_health_check} {when}: {result.verdict.reason}")
    if result.slot.state is not SlotState.MARKED:
        start_update_engine()


def _report_rollback(daemon: Daemon, slot: BootSlot, store: Store, boot_id: str, *, count: bool) -> None:
    """Say so when this boot is the fallback after a failed gate, count that rollback once in the
    journal (unless ``count`` is False: a dry run writes nothing), and export the tally either way."""
    record = store.journal.rollback
    status = rec.update_status(record, slot, boot_id)
    if status is not None and record is not None:
        log.warning("this boot is a rollback: %s", status[1])
        daemon.state.update(
            update_status=status[0], rollback_reason=status[1], rollback_record=record.to_json()
        )
        if count:
            before = store.journal.rollbacks
            if (
                store.count_rollback(record) is not before
            ):  # first seen: pin, should the failing boot not have
                updatehook.ensure_pinned(record.os_version)
    tally = store.journal.rollbacks
    daemon.metrics.rollback_tally(tally.count, tally.last_at)


def refresh_machine(daemon: Daemon) -> None:
    """``piccolod serve``'s refresh hook (:data:`piccolod.daemon.RefreshHook`): the slot table, the OS
    facts and the update-loop pin, as they are now."""
    daemon.metrics.machine(os=osinfo.read(), slot=detect_slot(daemon.policy))
    updatehook.publish_pin(daemon)


def _outcome(result: GateResult) -> GateOutcome:
    if result.slot.state is SlotState.MARKED:
        return GateOutcome.SKIPPED
    if result.verdict.warned:
        return GateOutcome.WARNED
    if result.ready:
        return GateOutcome.PASSED
    if result.verdict.condition is FailureCondition.STARTUP_TIMEOUT:
        return GateOutcome.TIMEOUT
    return GateOutcome.FAILED


def serve_hook(daemon: Daemon) -> None:
    """``piccolod serve``'s gate hook (:data:`piccolod.daemon.GateHook`): after a failed gate the agent
    stays up and serves the failure; the runtime loop follows either way, and the update watcher
    (:func:`piccolod.updatehook.start_watcher`) beside it."""
    first_boot_gate(daemon)
    if not daemon.stopping.is_set():
        updatehook.start_watcher(daemon)
