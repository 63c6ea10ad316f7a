"""The first-boot gate: the pure rule (:func:`decide`) and its driver (:func:`run_gate`).

docs/boot.md: update_engine marks the booted slot good 45 s after it starts, and on a slot that is not
marked it starts only once this agent has written the pass token (:mod:`piccolod.passtoken`). So:

- a marked slot (successful=1) is never gated: its verdict is ``skipped``, at once;
- an unmarked slot (successful=0, the first boot of an update) is assessed, retried until the required
  components pass or ``startup.timeout_seconds`` runs out; a failure condition gives a rollback record
  and, with ``rollback.enable_automatic``, one reboot after ``reboot_grace_seconds`` so GRUB boots the
  previous slot (the new one has tries=0, successful=0);
- a slot whose state cannot be read is gated like an unmarked one (fail closed) but never rebooted: a
  reboot that may land on the same slot would be a loop.

One gate per boot: the driver keeps the gate in the journal (:mod:`piccolod.journal`). A gate of this
boot that has a verdict is final: a restarted agent (``Restart=``, an administrator's ``systemctl
start``) returns it without assessing again and never reboots a second time. A gate that began and has
no verdict (the agent crashed, hung and was killed at ``TimeoutStartSec=``, or was restarted) resumes
with the deadline it began with, so a crash loop cannot extend it; past that deadline it ends in
``startup_timeout`` without assessing again.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from piccolod import baseline as bl
from piccolod import manager
from piccolod import record as rec
from piccolod.assess import Assessment, Cancelled
from piccolod.journal import BootGate, GateVerdict, Store
from piccolod.policy import Component, FailureCondition, OnPreExisting, PolicyFile
from piccolod.result import CheckResult, CheckState
from piccolod.slot import BootSlot, SlotState

log = logging.getLogger("piccolod.gate")

API_UNRESPONSIVE_SECONDS = 300.0
RETRY_SECONDS = 1.0  # pause between two assessments of a failing slot (no stabilisation sleep)
EXTEND_MARGIN_SECONDS = 5.0
MAX_ATTEMPTS = 1_000_000
ROLLBACK_DISABLED = (
    "rollback disabled by policy: staying on the unmarked slot; update-engine stays blocked; "
    "reboot or fix manually"
)
CONDITION_NOT_ENABLED = (
    "that failure is not one of the policy's failure_conditions: no automatic reboot; the slot stays "
    "unmarked and update-engine stays blocked; reboot or fix manually"
)
NO_REBOOT_UNKNOWN_SLOT = (
    "slot state unknown: no automatic reboot (it might boot the same slot again); update-engine stays "
    "blocked; fix the disk or reboot manually"
)


class Interrupted(Exception):
    """The agent is stopping (``sleep`` returned True): the gate ends without a verdict."""


class Decision(enum.StrEnum):
    READY = "ready"  # the gate passed (or was not needed)
    WAIT = "wait"  # assess again
    FAIL = "fail"  # gate closed: record, maybe one reboot


@dataclass(frozen=True)
class Verdict:
    """``classified``: the failing required checks with their class (:mod:`piccolod.baseline`);
    ``warned``: a READY verdict that let pre-existing failures through (``on_pre_existing: warn``)."""

    decision: Decision
    reason: str
    condition: FailureCondition | None = None
    reboot: bool = False
    classified: tuple[bl.Classified, ...] = ()
    warned: bool = False


def judge_failure(
    verdict: Verdict,
    failing: Sequence[CheckResult],
    baseline: bl.Baseline | None,
    *,
    slot: str | None,
    version: str | None,
    on_pre_existing: OnPreExisting,
) -> Verdict:
    """A FAIL verdict with its failures classified against the old slot's baseline; READY (warned)
    instead when every failure is pre-existing and the policy says ``warn``. Anything else is left as
    it is: a regression or an inconclusive failure fails the gate whatever the policy."""
    if verdict.decision is not Decision.FAIL:
        return verdict
    classified = bl.classify(failing, baseline, slot=slot, version=version)
    if not classified:
        return verdict
    text = bl.describe(classified)
    if on_pre_existing is OnPreExisting.WARN and bl.all_pre_existing(classified):
        return Verdict(
            Decision.READY,
            f"required checks failing as before the update, let through (rollback.on_pre_existing: "
            f"warn): {text}",
            classified=classified,
            warned=True,
        )
    return replace(
        verdict, reason=f"{verdict.reason} [{bl.overall(classified)}: {text}]", classified=classified
    )


def decide(
    slot: SlotState,
    failing: Sequence[str] | None,
    *,
    elapsed: float,
    deadline: float,
    conditions: Collection[FailureCondition],
    automatic: bool,
    dry_run: bool = False,
    api_failing_for: float = 0.0,
) -> Verdict:
    """The gate's rule for one moment.

    ``failing`` lists the required components that failed the last completed assessment (empty when
    they all passed, None when no assessment has completed yet). ``elapsed`` and ``deadline`` are seconds
    since the gate of this boot began and ``startup.timeout_seconds``.
    """
    if slot is SlotState.MARKED:
        return Verdict(Decision.READY, "slot already marked good: not gated")
    if failing is not None and not failing:
        return Verdict(Decision.READY, "required components passed")
    if (
        FailureCondition.API_UNRESPONSIVE_300S in conditions
        and failing
        and Component.API in failing
        and api_failing_for >= API_UNRESPONSIVE_SECONDS
    ):
        condition = FailureCondition.API_UNRESPONSIVE_300S
    elif elapsed < deadline:
        return Verdict(Decision.WAIT, "waiting for required components: " + _names(failing))
    else:
        # Past the deadline without a pass the gate fails, always: the conditions only say which failure
        # reboots. One that is not enabled keeps the slot unmarked (update-engine held), without a reboot.
        candidates = [FailureCondition.STARTUP_TIMEOUT]
        if failing:
            candidates.insert(0, FailureCondition.CRITICAL_COMPONENT_FAILURE)
        condition = next((c for c in candidates if c in conditions), candidates[0])
    reason = (
        f"required components failing: {_names(failing)}"
        if failing
        else f"no assessment finished within {deadline:g}s"
    )
    enabled = condition in conditions
    if not enabled:
        reason += f" ({condition} is not one of the policy's failure_conditions: no reboot)"
    reboot = enabled and automatic and slot is SlotState.UNMARKED and not dry_run
    return Verdict(Decision.FAIL, reason, condition, reboot)


def _names(failing: Sequence[str] | None) -> str:
    return ", ".join(str(c) for c in failing) if failing else "none answered yet"


# --- the driver ------------------------------------------------------------------------------------


@dataclass
class GateResult:
    """What :func:`run_gate` found or did; ``startup_health_check`` is the API's value for it."""

    slot: BootSlot
    verdict: Verdict
    attempts: int = 0
    elapsed: float = 0.0
    assessment: Assessment | None = None
    record: rec.RollbackRecord | None = None
    earlier: bool = False  # the verdict was given earlier in this boot (the agent was restarted)
    resumed: bool = False  # an earlier attempt of this boot's gate ended without a verdict
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
Reboot = Callable[[Sequence[str]], str | None]


def required_failing(a: Assessment) -> tuple[str, ...]:
    """The required checks that did not pass: failed, unknown or refused ones, or (should none be) the
    cancelled ones; a check skipped in the gate does not count."""
    return tuple(r.component for r in failing_results(a))


def failing_results(a: Assessment) -> tuple[CheckResult, ...]:
    """The results behind :func:`required_failing`."""
    judged = [r for r in a.results if r.required and not r.healthy and r.counted]
    answered = tuple(r for r in judged if r.state is not CheckState.CANCELLED)
    return answered or tuple(judged)


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


def _verdict_of(gate: BootGate) -> Verdict:
    if gate.verdict is GateVerdict.FAILED:
        return Verdict(
            Decision.FAIL, gate.reason, gate.condition, gate.reboot_planned, classified=gate.failures
        )
    return Verdict(Decision.READY, gate.reason, classified=gate.failures, warned=bool(gate.failures))


def run_gate(
    policy: PolicyFile,
    slot: BootSlot,
    assess: Assess,
    *,
    notify: Notify,
    boot_id: str,
    store: Store,
    dry_run: bool = False,
    on_assessment: Callable[[Assessment], None] | None = None,
    on_begin: Callable[[BootGate], None] | None = None,
    on_verdict: Callable[[GateResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    reboot: Reboot = manager.run_reboot,
) -> GateResult:
    """Gate this boot (or return its verdict, or resume it) and act on a failure.

    ``clock`` must be CLOCK_MONOTONIC (the journal keeps the deadline on it). In dry-run it runs one
    assessment, judges it as if the deadline were now, writes nothing and acts on nothing. ``reboot``
    runs the reboot command and returns an error text or None. ``sleep`` returning True (the daemon's
    "I am stopping") raises :class:`Interrupted`. ``on_verdict`` sees the result as soon as the verdict
    is known, before the reboot grace; ``on_begin`` sees this boot's gate when it starts (or resumes)
    waiting for one.
    """
    hp = policy.health_policy
    say: Notify = (lambda *_a, **_k: False) if dry_run else notify
    if slot.error:
        log.error("cannot read the booted slot (gate stays closed until checks pass): %s", slot.error)
    earlier = None if dry_run else store.journal.gate_of(boot_id, slot.partuuid)
    if earlier is not None and earlier.finished and slot.state is not SlotState.MARKED:
        return _repeat(policy, slot, earlier, store=store, say=say, sleep=sleep, reboot=reboot,
                       on_verdict=on_verdict)  # fmt: skip
    now = clock()
    resumed = earlier is not None and slot.state is not SlotState.MARKED
    if earlier is not None and resumed:
        gate = clamped(earlier, now, hp.startup.timeout_seconds)
        log.warning(
            "an earlier attempt of this boot's gate ended without a verdict: resuming it, %.1fs left",
            gate.deadline_monotonic - now,
        )
    else:
        gate = BootGate(
            boot_id=boot_id,
            slot=slot.name,
            partuuid=slot.partuuid,
            slot_state=str(slot.state),
            started_at=time.time(),
            started_monotonic=now,
            deadline_monotonic=now + hp.startup.timeout_seconds,
        )
        if not dry_run and slot.state is not SlotState.MARKED:
            store.begin(gate)
    result = _wait_for_verdict(
        policy, slot, gate, assess, say=say, dry_run=dry_run, resumed=resumed, on_assessment=on_assessment,
        on_begin=on_begin, clock=clock, sleep=sleep, baseline=store.journal.baseline,
    )  # fmt: skip
    result.resumed = resumed
    verdict = result.verdict
    if verdict.decision is Decision.READY:
        log.info("gate open after %.2fs: %s", result.elapsed, verdict.reason)
        if not dry_run:
            kind = GateVerdict.SKIPPED if slot.state is SlotState.MARKED else GateVerdict.PASSED
            store.finish(
                gate,
                verdict=kind,
                reason=verdict.reason,
                attempts=result.attempts,
                failures=verdict.classified,
            )
            if slot.state is not SlotState.MARKED:
                store.supersede_rollback()
        if on_verdict is not None:
            on_verdict(result)
        return result
    result.record = _record(policy, slot, result, boot_id, gate.started_at)
    log.error(
        "gate FAILED on %s after %.2fs: %s: %s", slot.name, result.elapsed, verdict.condition, verdict.reason
    )
    if dry_run:
        if on_verdict is not None:
            on_verdict(result)
        return result
    gate = replace(
        gate,
        verdict=GateVerdict.FAILED,
        condition=verdict.condition,
        reason=verdict.reason,
        attempts=result.attempts,
        reboot_planned=verdict.reboot,
        finished_at=time.time(),
        failures=verdict.classified,
    )
    store.record_rollback(result.record, gate)
    if on_verdict is not None:
        on_verdict(result)
    _act_on_failure(policy, slot, result, gate, store=store, say=say, sleep=sleep, reboot=reboot)
    return result


def clamped(gate: BootGate, now: float, timeout: float) -> BootGate:
    """A resumed gate held to what the policy allows, whatever the journal says: it began no later than
    ``now`` and runs out no later than ``timeout`` seconds after it began (so never after ``now +
    timeout``), and ``attempts`` is a count. A journal is written by this agent alone, but a value it does
    not hold to its range must neither stall the gate nor crash it (issue 13: 1e300, 10^9 s ahead)."""
    started = gate.started_monotonic
    if not math.isfinite(started) or not 0.0 <= started <= now:
        started = now
    deadline = gate.deadline_monotonic
    if not math.isfinite(deadline) or deadline > started + timeout:
        deadline = started + timeout
    attempts = min(max(gate.attempts, 0), MAX_ATTEMPTS)
    if (started, deadline, attempts) == (gate.started_monotonic, gate.deadline_monotonic, gate.attempts):
        return gate
    log.warning(
        "the journal's gate of this boot (began %r, deadline %r) is beyond the policy: holding it to began "
        "%.3f, "
        "deadline %.3f", gate.started_monotonic, gate.deadline_monotonic, started, deadline,
    )  # fmt: skip
    return replace(
        gate, started_monotonic=started, deadline_monotonic=max(deadline, started), attempts=attempts
    )


def _repeat(
    policy: PolicyFile,
    slot: BootSlot,
    earlier: BootGate,
    *,
    store: Store,
    say: Notify,
    sleep: Callable[[float], object],
    reboot: Reboot,
    on_verdict: Callable[[GateResult], None] | None,
) -> GateResult:
    """The verdict this boot's gate already gave: final. A failure's reboot happens at most once."""
    result = GateResult(slot, _verdict_of(earlier), earlier.attempts, earlier=True)
    log.warning("the gate of this boot already gave its verdict (%s): not gating again", earlier.verdict)
    if on_verdict is not None:
        on_verdict(result)
    if not result.ready:
        _act_on_failure(policy, slot, result, earlier, store=store, say=say, sleep=sleep, reboot=reboot)
    return result


def _act_on_failure(
    policy: PolicyFile,
    slot: BootSlot,
    result: GateResult,
    gate: BootGate,
    *,
    store: Store,
    say: Notify,
    sleep: Callable[[float], object],
    reboot: Reboot,
) -> None:
    """Say why, and reboot once when the verdict asks for it and no reboot was requested in this boot."""
    hp = policy.health_policy
    verdict = result.verdict
    say(f"STATUS=gate failed ({verdict.condition}): {verdict.reason}")
    if not verdict.reboot:
        why = no_reboot_reason(
            hp.rollback.enable_automatic, slot.state, verdict.condition in hp.rollback.failure_conditions
        )
        if why:
            log.critical("gate FAILED on %s and no reboot: %s", slot.name or "the booted slot", why)
            say(f"STATUS=gate failed ({verdict.condition}): {why}")
        return
    if gate.reboot_requested:
        log.warning("the reboot for this failed gate was already requested in this boot: not again")
        say(f"STATUS=gate failed ({verdict.condition}): reboot already requested in this boot")
        return
    grace = hp.rollback.reboot_grace_seconds
    say(f"STATUS=gate failed ({verdict.condition}): rebooting in {grace:g}s")
    if sleep(grace) is True:
        raise Interrupted("stopping during the reboot grace: no reboot")
    # Written before the command runs: whatever happens next, never a second reboot in this boot.
    store.reboot_requested(gate)
    result.reboot_error = reboot(hp.rollback.reboot_command)
    result.reboot_requested = True
    if result.reboot_error:
        log.error("reboot command failed: %s", result.reboot_error)
        say(f"STATUS=gate failed ({verdict.condition}): reboot command failed: {result.reboot_error}")
    else:
        log.warning("reboot requested: %s", " ".join(hp.rollback.reboot_command))
        say(f"STATUS=gate failed ({verdict.condition}): reboot requested")


def no_reboot_reason(automatic: bool, state: SlotState, enabled: bool = True) -> str | None:
    """Why a failed gate does not reboot, in the words the log and ``STATUS=`` use (None: it does or
    it already did in this boot). ``enabled``: whether the verdict's failure condition is enabled."""
    if not automatic:
        return ROLLBACK_DISABLED
    if state is not SlotState.UNMARKED:
        return NO_REBOOT_UNKNOWN_SLOT
    if not enabled:
        return CONDITION_NOT_ENABLED
    return None


def _wait_for_verdict(
    policy: PolicyFile,
    slot: BootSlot,
    gate: BootGate,
    assess: Assess,
    *,
    say: Notify,
    dry_run: bool,
    resumed: bool,
    on_assessment: Callable[[Assessment], None] | None,
    on_begin: Callable[[BootGate], None] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    baseline: bl.Baseline | None = None,
) -> GateResult:
    """Assess until :func:`decide` says something other than WAIT, with STATUS=/EXTEND_TIMEOUT_USEC=.

    The deadline is the gate's own (``gate.deadline_monotonic``); a resumed gate past it assesses no more.
    ``on_begin`` is told first, when the slot is gated for real (not marked, not a dry run).
    """
    hp = policy.health_policy
    if on_begin is not None and not dry_run and slot.state is not SlotState.MARKED:
        on_begin(gate)
    version = rec.os_version()
    deadline = gate.deadline_monotonic - gate.started_monotonic
    extend = hp.rollback.reboot_grace_seconds + EXTEND_MARGIN_SECONDS
    result = GateResult(slot, Verdict(Decision.WAIT, "not started"))
    start = clock()
    api_failing_since: float | None = None
    while True:
        left = min(gate.deadline_monotonic - clock(), hp.startup.timeout_seconds)  # clamped() holds it too
        first = result.attempts == 0 and not resumed
        if slot.state is not SlotState.MARKED and (left > 0 or first):
            say(
                f"STATUS=gate: checking {slot.name or 'unknown slot'} (attempt {result.attempts + 1}, "
                f"{max(0.0, left):.0f}s left)",
                f"EXTEND_TIMEOUT_USEC={int((max(0.0, left) + extend) * 1e6)}",
            )
            got = _assess_within(assess, max(0.05, left))
            result.attempts += 1
            if got is not None:
                result.assessment = got
                if on_assessment is not None:
                    on_assessment(got)
        now = clock()
        elapsed = now - gate.started_monotonic
        failing = None if result.assessment is None else required_failing(result.assessment)
        if failing and Component.API in failing:
            api_failing_since = now if api_failing_since is None else api_failing_since
        else:
            api_failing_since = None
        verdict = decide(
            slot.state,
            failing,
            elapsed=max(elapsed, deadline) if dry_run else elapsed,
            deadline=deadline,
            conditions=hp.rollback.failure_conditions,
            automatic=hp.rollback.enable_automatic,
            api_failing_for=0.0 if api_failing_since is None else now - api_failing_since,
        )
        if verdict.decision is Decision.FAIL and result.assessment is not None:
            verdict = judge_failure(
                verdict,
                failing_results(result.assessment),
                baseline,
                slot=slot.name,
                version=version,
                on_pre_existing=hp.rollback.on_pre_existing,
            )
        result.verdict = verdict
        result.elapsed = clock() - start
        if result.verdict.decision is not Decision.WAIT:
            return result
        if sleep(min(RETRY_SECONDS, max(0.0, gate.deadline_monotonic - clock()))) is True:
            raise Interrupted("stopping during the gate")


def _record(
    policy: PolicyFile, slot: BootSlot, result: GateResult, boot_id: str, started: float
) -> rec.RollbackRecord:
    a = result.assessment
    classes = {c.component: c for c in result.verdict.classified}
    worst = bl.overall(result.verdict.classified)
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
        components=tuple(rec.ComponentVerdict.of(r, classes.get(str(r.component))) for r in a.results)
        if a
        else (),
        failure_class=str(worst) if worst else "",
    )
