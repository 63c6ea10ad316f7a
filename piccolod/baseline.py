"""The regression-aware gate: the old slot's baseline, and what each failing required check is.

Before the machine reboots into an update, the agent on the old slot runs every gate check once and
keeps what each answered (:class:`Baseline`) in its journal in the state directory, which both slots
share (:mod:`piccolod.updates.watch` decides when). The gate on the new slot then tells apart, for every
required check that fails (:func:`classify`):

- ``regression``: it passed in the baseline: the update broke it, and rolling back helps;
- ``pre_existing``: it failed in the baseline too: rolling back does not fix it;
- ``inconclusive``: there is nothing to compare with: no baseline, a baseline of another update or
  taken on this very slot, a check the baseline did not run or could not tell about, or a check that
  says ``unknown`` now.

``rollback.on_pre_existing`` says what a gate whose every failure is ``pre_existing`` does: ``fail``
(the default: any required failure holds the slot, as before) or ``warn`` (the slot is marked, the
gate's outcome is ``warned``, and the alert rule on it fires). A regression or an inconclusive failure
always fails the gate: only a comparison can relax it, never its absence.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from piccolod.result import CheckResult, CheckState

MAX_CHECKS = 1024  # a baseline keeps at most this many checks (a policy has far fewer)
MAX_REASON = 200  # characters of a check's reason kept in the baseline


class FailureClass(enum.StrEnum):
    REGRESSION = "regression"
    PRE_EXISTING = "pre_existing"
    INCONCLUSIVE = "inconclusive"


# A gate's overall class: the worst of its failures' classes.
_RANK = {FailureClass.PRE_EXISTING: 0, FailureClass.INCONCLUSIVE: 1, FailureClass.REGRESSION: 2}


@dataclass(frozen=True)
class BaselineCheck:
    """One check's answer in the baseline run (its state, as :class:`~piccolod.result.CheckState`)."""

    ignores_unknown_keys: ClassVar[bool] = True

    component: str
    state: str
    reason: str = ""


@dataclass(frozen=True)
class Baseline:
    """Every gate check's answer on the old slot before an update. ``taken_at`` is seconds since the
    epoch; ``version`` the OS version it ran on; ``target_version`` the update's (update_engine's
    ``NEW_VERSION``, empty when it did not say yet); ``trigger`` what made the agent take it."""

    ignores_unknown_keys: ClassVar[bool] = True

    version: str | None
    taken_at: float
    boot_id: str
    slot: str | None
    trigger: str
    target_version: str = ""
    checks: tuple[BaselineCheck, ...] = field(default=())

    def state_of(self, name: str) -> str | None:
        return next((c.state for c in self.checks if c.component == name), None)


@dataclass(frozen=True)
class Classified:
    """One failing required check of a gate, its class and why."""

    ignores_unknown_keys: ClassVar[bool] = True

    component: str
    failure_class: FailureClass
    reason: str


def of_results(
    results: Iterable[CheckResult],
    *,
    version: str | None,
    taken_at: float,
    boot_id: str,
    slot: str | None,
    trigger: str,
    target_version: str = "",
) -> Baseline:
    """The baseline of one assessment's results (checks skipped in the gate are left out)."""
    checks = tuple(
        BaselineCheck(str(r.component), str(r.state), r.reason[:MAX_REASON])
        for r in results
        if r.state is not CheckState.SKIPPED
    )[:MAX_CHECKS]
    return Baseline(version, taken_at, boot_id, slot, trigger, target_version, checks)


def usable(baseline: Baseline | None, *, slot: str | None, version: str | None) -> str | None:
    """Why ``baseline`` cannot be compared with a gate of ``slot`` running ``version`` (None: it can).

    It must come from the other slot (one taken on this slot describes an earlier life of it), and when
    it names the update it was taken for, that must be the version this slot runs."""
    if baseline is None:
        return "no baseline was taken before this update"
    if slot is not None and baseline.slot == slot:
        return f"the baseline was taken on this slot ({slot}), not on the one this update came from"
    if baseline.target_version and version and baseline.target_version != version:
        return f"the baseline was taken before an update to {baseline.target_version}, this is {version}"
    return None


def classify(
    failing: Sequence[CheckResult], baseline: Baseline | None, *, slot: str | None, version: str | None
) -> tuple[Classified, ...]:
    """The class of each failing required check in ``failing`` (see the module's text)."""
    unusable = usable(baseline, slot=slot, version=version)
    out = []
    for r in failing:
        name = str(r.component)
        if r.state is CheckState.UNKNOWN:
            out.append(Classified(name, FailureClass.INCONCLUSIVE, "the check says unknown"))
            continue
        if r.state is CheckState.CANCELLED:
            out.append(Classified(name, FailureClass.INCONCLUSIVE, "the gate stopped waiting for it"))
            continue
        if unusable is not None or baseline is None:
            out.append(Classified(name, FailureClass.INCONCLUSIVE, unusable or "no baseline"))
            continue
        before = baseline.state_of(name)
        where = f"in the baseline of {baseline.version or 'the previous version'}"
        if before == CheckState.PASSED:
            out.append(Classified(name, FailureClass.REGRESSION, f"passed {where}, {r.state} now"))
        elif before in (CheckState.FAILED, CheckState.REFUSED):
            out.append(Classified(name, FailureClass.PRE_EXISTING, f"{before} {where} too"))
        elif before is None:
            out.append(Classified(name, FailureClass.INCONCLUSIVE, f"not run {where}"))
        else:
            out.append(Classified(name, FailureClass.INCONCLUSIVE, f"{before} {where}"))
    return tuple(out)


def overall(classified: Sequence[Classified]) -> FailureClass | None:
    """The gate's class: the worst of its failures' (None when nothing failed)."""
    if not classified:
        return None
    return max((c.failure_class for c in classified), key=_RANK.__getitem__)


def all_pre_existing(classified: Sequence[Classified]) -> bool:
    return bool(classified) and all(c.failure_class is FailureClass.PRE_EXISTING for c in classified)


def describe(classified: Sequence[Classified]) -> str:
    """``name: class (reason); ...`` for logs, ``STATUS=`` and reasons."""
    return "; ".join(f"{c.component}: {c.failure_class} ({c.reason})" for c in classified)


def format_baseline(baseline: Baseline | None) -> str:
    """The baseline as ``piccolod status`` shows it (one line, escaped)."""
    if baseline is None:
        return "baseline: none"
    from piccolod.record import when  # record imports this module
    from piccolod.text import printable

    failing = [f"{c.component} ({c.state})" for c in baseline.checks if c.state != CheckState.PASSED]
    return printable(
        f"baseline: {baseline.version or '?'} on {baseline.slot} at {when(baseline.taken_at)} "
        f"({baseline.trigger}, before {baseline.target_version or 'an update'}): {len(baseline.checks)} "
        f"checks, failing: {', '.join(failing) or 'none'}"
    )
