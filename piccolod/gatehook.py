"""The first-boot gate wired into the daemon: ``piccolod serve``'s gate hook and ``piccolod gate``.

:func:`first_boot_gate` reads the booted slot, reports a rollback found from an earlier boot
(``update_status: rolled_back``, ``piccolod_rollbacks_total``), runs :func:`piccolod.gate.run_gate` with
the daemon's own assessments (no hysteresis: the gate judges what the checks answer), publishes
``startup_health_check`` and the gate outcome metric, writes ``last-gate.json``, and either sends
``READY=1`` or raises :class:`GateClosed`, which ``piccolod serve`` turns into exit status 3 (the unit's
``RestartPreventExitStatus=``: a failed gate is never restarted into a second gate).

``last-gate.json`` says ``pending`` while a gate runs, and ``ready_sent`` once a pass has sent
``READY=1``. A gate that finds ``pending`` (or a pass without ``ready_sent``) from its own boot follows an
attempt that never finished (the agent crashed or was stopped). systemd failed update-engine's start job
along with that attempt (``Requires=``), and the agent's restart does not queue it again. So after such
a gate passes and ``READY=1`` is out, the agent asks systemd to start update-engine
(:data:`UPDATE_ENGINE_START`, ``--no-block``, from a thread: the agent never waits for it).

The same holds on any slot, marked ones included, for a start of piccolod that failed before it sent
``READY=1`` (a crash, an OOM kill, a failed ``ExecStartPre=``): ``starts.json`` records each start of
this boot and whether it sent ``READY=1``, and systemd's ``NRestarts`` of the unit counts the starts that
never got as far as the agent. After ``READY=1`` in a boot with such an earlier start, the agent asks
systemd to start update-engine once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piccolod import record as rec
from piccolod.gate import GateResult, Interrupted, no_reboot_reason, run_gate
from piccolod.metrics import GateOutcome
from piccolod.policy import FailureCondition, PolicyFile
from piccolod.slot import BootSlot, SlotState, detect

if TYPE_CHECKING:
    from piccolod.daemon import Daemon

log = logging.getLogger("piccolod.gate")


LAST_GATE_NAME = "last-gate.json"
STARTS_NAME = "starts.json"
UPDATE_ENGINE_START = ("systemctl", "start", "--no-block", "update-engine.service")


class GateClosed(Exception):
    """The gate failed: ``piccolod serve`` exits with :data:`EXIT_GATE_FAILED`, never sending READY=1."""


EXIT_GATE_FAILED = 3  # the unit's RestartPreventExitStatus=: no second gate in this boot


def detect_slot(policy: PolicyFile) -> BootSlot:
    boot = policy.agent.boot
    return detect(boot.cmdline, boot.disk)


def start_update_engine(argv: Sequence[str] = UPDATE_ENGINE_START) -> threading.Thread:
    """Ask systemd to start update-engine, in a daemon thread; logs what systemctl answered."""

    def work() -> None:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("cannot ask systemd to start update-engine (%s): %s", " ".join(argv), e)  # noqa: TRY400
            return
        if done.returncode != 0:
            log.error("%s exited %d: %s", " ".join(argv), done.returncode, done.stderr.strip()[:300])
        else:
            log.info("asked systemd to start update-engine: %s", " ".join(argv))

    t = threading.Thread(target=work, name="start-update-engine", daemon=True)
    t.start()
    return t


def first_boot_gate(
    daemon: Daemon,
    *,
    dry_run: bool = False,
    after_interrupted_pass: Callable[[], object] = start_update_engine,
) -> GateResult | None:
    """The gate as :class:`~piccolod.daemon.Daemon`'s hook: slot, rollback report, verdict, READY=1.

    Raises :class:`GateClosed` when the gate fails (after the record and any reboot request); returns
    None when the agent was told to stop during the gate (no verdict, no READY=1).
    ``after_interrupted_pass`` runs (once) after ``READY=1`` when an earlier gate or start of this boot
    ended without ``READY=1`` (default: :func:`start_update_engine`).
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
    if slot.gpt_header == "backup":
        log.warning("%s: %s", slot.disk, slot.gpt_note)
    _report_rollback(daemon, slot, state_dir, boot_id)

    def publish(result: GateResult) -> None:  # as soon as the verdict is known, before any reboot grace
        daemon.state.update(startup_health_check=result.startup_health_check)
        daemon.metrics.gate_outcome(_outcome(result))
        _write_last_gate(state_dir, result, boot_id)

    kick = _Kick(state_dir, boot_id, daemon.env, after_interrupted_pass, dry_run=dry_run)

    gated_known = slot.state is SlotState.UNMARKED and not dry_run
    last = _last_gate_of_this_boot(state_dir, boot_id, slot) if gated_known else {}
    earlier = last.get("startup_health_check")
    if earlier in ("passed", "failed"):  # restarted (Restart=, Upholds=): the verdict of this boot stands
        daemon.state.update(startup_health_check=earlier)
        if earlier == "passed":
            daemon.ready("gate passed earlier in this boot")
            if last.get("ready_sent") is False:
                kick.now("the gate passed earlier in this boot, but the agent stopped before READY=1")
                _mark_ready_sent(state_dir, last)
            kick.after_ready()
            return None
        why = no_reboot_reason(policy.health_policy.rollback.enable_automatic, slot.state)
        text = "gate already failed in this boot: not gating (or rebooting) again" + f"; {why}" * bool(why)
        daemon.notify(f"STATUS={text}")
        raise GateClosed(text)
    interrupted = earlier == "pending"
    if interrupted:
        log.warning("an earlier gate of this boot never finished (crashed or stopped): gating again")
    if slot.state is not SlotState.MARKED:
        daemon.state.update(startup_health_check="pending")
    if gated_known:
        _write_pending(state_dir, slot, boot_id)
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
        if interrupted:
            kick.now("gate passed after an attempt of this boot that never finished")
        if gated_known:
            _write_last_gate(state_dir, result, boot_id, ready_sent=True)
        kick.after_ready()
        return result
    why = (
        None
        if result.verdict.reboot
        else no_reboot_reason(policy.health_policy.rollback.enable_automatic, slot.state)
    )
    raise GateClosed(
        f"gate failed: {result.verdict.condition}: {result.verdict.reason}" + f"; {why}" * bool(why)
    )


class _Kick:
    """Asks systemd, once, to start update-engine after READY=1 when an earlier attempt of this boot
    ended without READY=1 (its start job failed with that attempt). Records this start in
    ``starts.json``."""

    def __init__(
        self,
        state_dir: Path,
        boot_id: str,
        env: Mapping[str, str] | None,
        run: Callable[[], object],
        *,
        dry_run: bool,
    ) -> None:
        self.state_dir, self.boot_id, self.env, self.run = state_dir, boot_id, env, run
        self.dry_run = dry_run
        self.done = False
        self.earlier = None if dry_run else _earlier_start_without_ready(state_dir, boot_id)
        if not dry_run:
            _write_start(state_dir, boot_id, ready_sent=False)

    def now(self, why: str) -> None:
        if self.done:
            return
        self.done = True
        log.warning("%s: update-engine's start job failed with it, asking systemd to start it again", why)
        self.run()

    def after_ready(self) -> None:
        if self.dry_run:
            return
        why = self.earlier or _systemd_restarts(self.env)
        if why:
            self.now(why)
        _write_start(self.state_dir, self.boot_id, ready_sent=True)


def _earlier_start_without_ready(state_dir: Path, boot_id: str) -> str | None:
    """Why an earlier start of the agent in this boot ended before READY=1 (None: none did)."""
    try:
        data = json.loads((state_dir / STARTS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("boot_id") == boot_id and data.get("ready_sent") is False:
        return "an earlier start of piccolod in this boot ended before READY=1"
    return None


def _write_start(state_dir: Path, boot_id: str, *, ready_sent: bool) -> None:
    data = {"boot_id": boot_id, "pid": os.getpid(), "ready_sent": ready_sent, "at": time.time()}
    try:
        rec.write_json_atomic(state_dir / STARTS_NAME, data)
    except OSError as e:
        log.error("cannot write %s: %s", state_dir / STARTS_NAME, e)  # noqa: TRY400


def own_unit(cgroup_file: Path = Path("/proc/self/cgroup")) -> str | None:
    """The systemd service this process runs in (from its cgroup path), or None."""
    try:
        text = cgroup_file.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.endswith(".service"):
            return name
    return None


def _systemd_restarts(env: Mapping[str, str] | None) -> str | None:
    """Why systemd's view says an earlier start failed (its NRestarts of our unit is above 0): this
    catches starts that failed before the agent ran (``ExecStartPre=``). None outside systemd."""
    if "INVOCATION_ID" not in (os.environ if env is None else env):
        return None
    unit = own_unit()
    if unit is None:
        return None
    argv = ["systemctl", "show", "--property=NRestarts", "--value", unit]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("cannot ask systemd how often %s restarted: %s", unit, e)  # noqa: TRY400
        return None
    value = done.stdout.strip()
    if done.returncode != 0 or not value.isdigit():
        log.error("%s exited %d: %s", " ".join(argv), done.returncode, done.stderr.strip()[:200])
        return None
    if int(value) == 0:
        return None
    return f"systemd restarted {unit} {value} time(s) in this boot, so an earlier start failed"


def _last_gate_of_this_boot(state_dir: Path, boot_id: str, slot: BootSlot) -> dict[str, Any]:
    """``last-gate.json`` if a gate of this boot began on this slot (its ``startup_health_check`` is
    ``passed``/``failed``, or ``pending`` if it never finished), else an empty dict."""
    try:
        last = json.loads((state_dir / LAST_GATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(last, dict) or last.get("boot_id") != boot_id or last.get("partuuid") != slot.partuuid:
        return {}
    return last if last.get("startup_health_check") in ("passed", "failed", "pending") else {}


def _mark_ready_sent(state_dir: Path, last: dict[str, Any]) -> None:
    try:
        rec.write_json_atomic(state_dir / LAST_GATE_NAME, {**last, "ready_sent": True})
    except OSError as e:
        log.error("cannot write %s: %s", state_dir / LAST_GATE_NAME, e)  # noqa: TRY400


def _write_pending(state_dir: Path, slot: BootSlot, boot_id: str) -> None:
    """``last-gate.json`` for a gate that has begun: a restart that finds it knows this one never ended."""
    data = {
        "boot_id": boot_id,
        "slot": slot.name,
        "partuuid": slot.partuuid,
        "slot_state": str(slot.state),
        "startup_health_check": "pending",
        "reason": "gate began; no verdict yet (or the agent stopped before one)",
        "started_at": time.time(),
    }
    try:
        rec.write_json_atomic(state_dir / LAST_GATE_NAME, data)
    except OSError as e:
        log.error("cannot write %s: %s", state_dir / LAST_GATE_NAME, e)  # noqa: TRY400


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


def _write_last_gate(state_dir: Path, result: GateResult, boot_id: str, *, ready_sent: bool = False) -> None:
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
        "ready_sent": ready_sent,
        "finished_at": time.time(),
    }
    try:
        rec.write_json_atomic(state_dir / LAST_GATE_NAME, data)
    except OSError as e:
        log.error("cannot write %s: %s", state_dir / LAST_GATE_NAME, e)  # noqa: TRY400


def serve_hook(daemon: Daemon) -> None:
    """``piccolod serve``'s gate hook (:data:`piccolod.daemon.GateHook`)."""
    first_boot_gate(daemon)
