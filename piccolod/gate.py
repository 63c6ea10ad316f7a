"""The first-boot gate: decide whether systemd may consider piccolod ready (and update_engine mark the slot).

docs/flatcar.md: update_engine marks the booted slot good 45 s after it starts, and it starts only
once ``piccolod.service`` (``Type=notify``) has sent ``READY=1``. So:

- a marked slot (successful=1) is never gated: ``READY=1`` at once;
- an unmarked slot (successful=0, the first boot of an update) is assessed, retried until the required
  components pass or ``startup.timeout_seconds`` runs out; pass gives ``READY=1``; a failure condition
  gives a rollback record, no ``READY=1`` and, with ``rollback.enable_automatic``, one reboot after
  ``reboot_grace_seconds`` so GRUB boots the previous slot (the new one has tries=0, successful=0);
- a slot whose state cannot be read is gated like an unmarked one (fail closed) but never rebooted: a
  reboot that may land on the same slot would be a loop.

:func:`decide` is the pure rule; :func:`run_gate` drives it with real time, ``STATUS=`` and
``EXTEND_TIMEOUT_USEC=`` notifications, the record and the reboot. A marker file in the state directory,
keyed by boot id and written before the reboot command runs, keeps it to one reboot per boot even
across restarts of the agent. A state directory that cannot be written (``/var`` full or read-only,
exactly when storage fails) never stops the verdict: the failure is logged as critical, an in-process
flag stands in for the marker, and the reboot still happens once (a second boot cannot land on the bad
slot anyway: GRUB has already set its tries to 0).
"""

from __future__ import annotations

import enum
import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from piccolod import record as rec
from piccolod.assess import Assessment, Cancelled
from piccolod.policy import Component, FailureCondition, PolicyFile
from piccolod.slot import BootSlot, SlotState

log = logging.getLogger("piccolod.gate")

API_UNRESPONSIVE_SECONDS = 300.0
RETRY_SECONDS = 1.0  # pause between two assessments of a failing slot (no stabilisation sleep)
EXTEND_MARGIN_SECONDS = 5.0
MARKER_NAME = "reboot-requested.json"
ROLLBACK_DISABLED = (
    "rollback disabled by policy: staying on the unmarked slot; update-engine stays blocked; "
    "reboot or fix manually"
)
NO_REBOOT_UNKNOWN_SLOT = (
    "slot state unknown: no automatic reboot (it might boot the same slot again); update-engine stays "
    "blocked; fix the disk or reboot manually"
)


class Interrupted(Exception):
    """The agent is stopping (``sleep`` returned True): the gate ends without a verdict."""


class Decision(enum.StrEnum):
    READY = "ready"  # send READY=1
    WAIT = "wait"  # assess again
    FAIL = "fail"  # gate closed: record, no READY=1


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    condition: FailureCondition | None = None
    reboot: bool = False


def decide(
    slot: SlotState,
    failing: Sequence[Component] | None,
    *,
    elapsed: float,
    deadline: float,
    conditions: Collection[FailureCondition],
    automatic: bool,
    already_rebooted: bool = False,
    dry_run: bool = False,
    api_failing_for: float = 0.0,
) -> Verdict:
    """The gate's rule for one moment.

    ``failing`` lists the required components that failed the last completed assessment (empty when
    they all passed, None when no assessment has completed yet). ``elapsed`` and ``deadline`` are seconds
    since the gate began and ``startup.timeout_seconds``.
    """
    if slot is SlotState.MARKED:
        return Verdict(Decision.READY, "slot already marked good: not gated")
    if failing is not None and not failing:
        return Verdict(Decision.READY, "required components passed")
    condition: FailureCondition | None = None
    if (
        FailureCondition.API_UNRESPONSIVE_300S in conditions
        and failing
        and Component.API in failing
        and api_failing_for >= API_UNRESPONSIVE_SECONDS
    ):
        condition = FailureCondition.API_UNRESPONSIVE_300S
    elif elapsed < deadline:
        return Verdict(Decision.WAIT, "waiting for required components: " + _names(failing))
    elif failing and FailureCondition.CRITICAL_COMPONENT_FAILURE in conditions:
        condition = FailureCondition.CRITICAL_COMPONENT_FAILURE
    elif FailureCondition.STARTUP_TIMEOUT in conditions:
        condition = FailureCondition.STARTUP_TIMEOUT
    else:
        return Verdict(Decision.READY, "deadline passed but no enabled failure condition applies")
    reason = (
        f"required components failing: {_names(failing)}"
        if failing
        else f"no assessment finished within {deadline:g}s"
    )
    reboot = automatic and slot is SlotState.UNMARKED and not already_rebooted and not dry_run
    return Verdict(Decision.FAIL, reason, condition, reboot)


def _names(failing: Sequence[Component] | None) -> str:
    return ", ".join(str(c) for c in failing) if failing else "none answered yet"


# --- the driver ------------------------------------------------------------------------------------


@dataclass
class GateResult:
    """What :func:`run_gate` did; ``startup_health_check`` is the API's value for it."""

    slot: BootSlot
    verdict: Verdict
    attempts: int = 0
    elapsed: float = 0.0
    assessment: Assessment | None = None
    record: rec.RollbackRecord | None = None
    reboot_requested: bool = False
    reboot_error: str | None = None
    events: list[str] = field(default_factory=list)

    @property
    def startup_health_check(self) -> str:
        if self.slot.state is SlotState.MARKED:
            return "skipped"
        return "passed" if self.verdict.decision is Decision.READY else "failed"

    @property
    def ready(self) -> bool:
        return self.verdict.decision is Decision.READY


Notify = Callable[..., bool]
Assess = Callable[[], Assessment]


def required_failing(a: Assessment) -> tuple[Component, ...]:
    return tuple(r.component for r in a.results if r.required and not r.healthy)


# (state dir, boot id) pairs this process asked to reboot: backs up a marker that could not be written
_REBOOTS_REQUESTED: set[tuple[str, str]] = set()


def reboot_marked(state_dir: Path, boot_id: str) -> bool:
    """Whether a reboot was already requested in this boot (the marker names this boot id, or this
    process asked for it even if the marker could not be written)."""
    if (str(state_dir), boot_id) in _REBOOTS_REQUESTED:
        return True
    try:
        data = json.loads((state_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("boot_id") == boot_id


def _assess_within(assess: Assess, seconds: float) -> Assessment | None:
    """Run one assessment, but give up waiting for it after ``seconds`` (it keeps running, abandoned)."""
    box: list[Assessment] = []
    err: list[BaseException] = []

    def work() -> None:
        try:
            box.append(assess())
        except BaseException as e:  # a broken assessment is a failed attempt
            err.append(e)

    t = threading.Thread(target=work, name="gate-assess", daemon=True)
    t.start()
    t.join(max(0.0, seconds))
    if err and isinstance(err[0], Cancelled):
        # The daemon is stopping (SIGTERM): no verdict, no record, no reboot.
        raise Interrupted("stopping during the gate")
    if err:
        log.error("assessment raised: %s", err[0])
    return box[0] if box else None


def run_gate(
    policy: PolicyFile,
    slot: BootSlot,
    assess: Assess,
    *,
    notify: Notify,
    boot_id: str,
    dry_run: bool = False,
    on_assessment: Callable[[Assessment], None] | None = None,
    on_verdict: Callable[[GateResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    reboot: Callable[[Sequence[str]], str | None] | None = None,
) -> GateResult:
    """Gate this boot. Sends ``READY=1`` through ``notify`` on a pass (never in dry-run).

    In dry-run it runs one assessment, judges it as if the deadline were now, and acts on nothing.
    ``reboot`` runs the reboot command and returns an error text or None (default: :func:`run_reboot`).
    ``sleep`` returning True (the daemon's "I am stopping") raises :class:`Interrupted`.
    ``on_verdict`` sees the result as soon as the verdict is known, before READY=1 or the reboot grace.
    """
    say: Notify = (lambda *_a, **_k: False) if dry_run else notify
    started_wall = time.time()
    if slot.error:
        log.error("cannot read the booted slot (gate stays closed until checks pass): %s", slot.error)
    result = _wait_for_verdict(
        policy,
        slot,
        assess,
        say=say,
        boot_id=boot_id,
        dry_run=dry_run,
        on_assessment=on_assessment,
        clock=clock,
        sleep=sleep,
    )
    hp = policy.health_policy
    state_dir = Path(policy.agent.state_dir)
    verdict = result.verdict
    if on_verdict is not None:
        on_verdict(result)
    if verdict.decision is Decision.READY:
        log.info("gate open after %.2fs: %s", result.elapsed, verdict.reason)
        say("READY=1", f"STATUS=gate passed: {verdict.reason}")
        if not dry_run and slot.state is not SlotState.MARKED:
            _try_write(f"move the old rollback record aside in {state_dir}", lambda: rec.supersede(state_dir))
        return result
    result.record = _record(policy, slot, result, boot_id, started_wall)
    log.error(
        "gate FAILED on %s after %.2fs: %s: %s", slot.name, result.elapsed, verdict.condition, verdict.reason
    )
    if dry_run:
        return result
    record = result.record
    _try_write(f"write the rollback record to {state_dir}", lambda: rec.write(state_dir, record))
    say(f"STATUS=gate failed ({verdict.condition}): {verdict.reason}")
    if not verdict.reboot:
        why = no_reboot_reason(hp.rollback.enable_automatic, slot.state)
        if why:
            log.critical("gate FAILED on %s and no reboot: %s", slot.name or "the booted slot", why)
            say(f"STATUS=gate failed ({verdict.condition}): {why}")
        return result
    # The marker goes first: a crash between it and the reboot must not allow a second reboot.
    _REBOOTS_REQUESTED.add((str(state_dir), boot_id))
    _try_write(
        f"write the reboot marker to {state_dir} (the in-process flag still prevents a second reboot)",
        lambda: rec.write_json_atomic(
            state_dir / MARKER_NAME, {"boot_id": boot_id, "requested_at": time.time()}
        ),
    )
    grace = hp.rollback.reboot_grace_seconds
    say(f"STATUS=gate failed ({verdict.condition}): rebooting in {grace:g}s")
    if sleep(grace) is True:
        raise Interrupted("stopping during the reboot grace: no reboot")
    result.reboot_error = (reboot or run_reboot)(hp.rollback.reboot_command)
    result.reboot_requested = True
    if result.reboot_error:
        log.error("reboot command failed: %s", result.reboot_error)
    else:
        log.warning("reboot requested: %s", " ".join(hp.rollback.reboot_command))
    return result


def _try_write(what: str, write: Callable[[], object]) -> bool:
    """Run one state-directory write; an OSError is logged as critical and never stops the gate."""
    try:
        write()
    except OSError as e:
        log.critical("cannot %s: %s; the gate goes on without it", what, e)
        return False
    return True


def no_reboot_reason(automatic: bool, state: SlotState) -> str | None:
    """Why a failed gate does not reboot, in the words the log and ``STATUS=`` use (None: it does or
    it already did in this boot)."""
    if not automatic:
        return ROLLBACK_DISABLED
    if state is not SlotState.UNMARKED:
        return NO_REBOOT_UNKNOWN_SLOT
    return None


def _wait_for_verdict(
    policy: PolicyFile,
    slot: BootSlot,
    assess: Assess,
    *,
    say: Notify,
    boot_id: str,
    dry_run: bool,
    on_assessment: Callable[[Assessment], None] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
) -> GateResult:
    """Assess until :func:`decide` says something other than WAIT, with STATUS=/EXTEND_TIMEOUT_USEC=."""
    hp = policy.health_policy
    deadline = hp.startup.timeout_seconds
    extend = hp.rollback.reboot_grace_seconds + EXTEND_MARGIN_SECONDS
    result = GateResult(slot, Verdict(Decision.WAIT, "not started"))
    start = clock()
    api_failing_since: float | None = None
    while True:
        elapsed = clock() - start
        left = max(0.0, deadline - elapsed)
        if slot.state is not SlotState.MARKED and (left > 0 or result.attempts == 0):
            say(
                f"STATUS=gate: checking {slot.name or 'unknown slot'} (attempt {result.attempts + 1}, "
                f"{left:.0f}s left)",
                f"EXTEND_TIMEOUT_USEC={int((left + extend) * 1e6)}",
            )
            got = _assess_within(assess, max(0.05, left))
            result.attempts += 1
            if got is not None:
                result.assessment = got
                if on_assessment is not None:
                    on_assessment(got)
            elapsed = clock() - start
        failing = None if result.assessment is None else required_failing(result.assessment)
        if failing and Component.API in failing:
            api_failing_since = elapsed if api_failing_since is None else api_failing_since
        else:
            api_failing_since = None
        result.verdict = decide(
            slot.state,
            failing,
            elapsed=max(elapsed, deadline) if dry_run else elapsed,
            deadline=deadline,
            conditions=hp.rollback.failure_conditions,
            automatic=hp.rollback.enable_automatic,
            already_rebooted=reboot_marked(Path(policy.agent.state_dir), boot_id),
            api_failing_for=0.0 if api_failing_since is None else elapsed - api_failing_since,
        )
        result.elapsed = clock() - start
        if result.verdict.decision is not Decision.WAIT:
            return result
        if sleep(min(RETRY_SECONDS, max(0.0, deadline - (clock() - start)))) is True:
            raise Interrupted("stopping during the gate")


def _record(
    policy: PolicyFile, slot: BootSlot, result: GateResult, boot_id: str, started: float
) -> rec.RollbackRecord:
    a = result.assessment
    return rec.RollbackRecord(
        boot_id=boot_id,
        slot=slot.name,
        partuuid=slot.partuuid,
        disk=slot.disk,
        os_version=rec.os_version(),
        condition=str(result.verdict.condition) if result.verdict.condition else None,
        reason=result.verdict.reason,
        started_at=started,
        failed_at=time.time(),
        deadline_seconds=policy.health_policy.startup.timeout_seconds,
        attempts=result.attempts,
        reboot_requested=result.verdict.reboot,
        components=tuple(rec.ComponentVerdict.of(r) for r in a.results) if a else (),
    )


def run_reboot(argv: Sequence[str]) -> str | None:
    """Run the reboot command once; returns an error text, or None when it exited 0.

    ``systemctl reboot`` ended by SIGTERM counts as done: PID 1 stops this unit's cgroup, the command
    with it, as soon as the shutdown it queued begins, sometimes before the command has read its reply.
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{argv[0]}: {e}"
    if done.returncode == -signal.SIGTERM:
        log.info("%s was ended by SIGTERM: the shutdown it asked for has begun", " ".join(argv))
        return None
    if done.returncode != 0:
        return f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:200]}"
    return None
