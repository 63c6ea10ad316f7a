"""The update watcher and the update-loop pin wired into ``piccolod serve``.

- :func:`start_watcher` starts :class:`piccolod.updates.watch.Watcher` once the gate has its verdict;
  its baselines (:func:`take_baseline`) run every check whose ``run_on`` has the gate, once, with an
  assessor of their own (the runtime loop's checks and state are not touched), and go into the
  journal;
- :func:`pin_failed_version` pins the version whose gate failed (the failing boot, before its reboot,
  and again the fallback boot that counts the rollback, should the first write have failed);
- :func:`release_pin` removes it when an update passes its gate: the machine has moved on;
- :func:`publish_pin` puts the pin into the health document and ``piccolod_update_pinned``: the one
  place that reads it for them, from the file update_engine reads.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piccolod import baseline as bl
from piccolod import record as rec
from piccolod.assess import Assessor
from piccolod.checkspec import Phase
from piccolod.journal import Store
from piccolod.updates import pin
from piccolod.updates.engine import EngineStatus
from piccolod.updates.watch import Seen, Watcher

if TYPE_CHECKING:
    from piccolod.daemon import Daemon

log = logging.getLogger("piccolod.updates")


def pin_failed_version(version: str | None, why: str) -> pin.Pin | None:
    """Pin ``version`` after its gate failed; logged, never raised (the gate's verdict stands)."""
    if not version or not pin.valid_version(version):
        log.critical(
            "cannot pin the failed version (%r): not a version; update_engine may install it again", version
        )
        return None
    try:
        done = pin.pin(version, why)
    except pin.PinError as e:
        log.critical("cannot pin %s: %s; update_engine may install it again", version, e)
        return None
    log.warning(
        "pinned %s in %s: update_engine reports it as installed, so it is not offered again",
        version,
        done.path,
    )
    return done


def ensure_pinned(version: str | None) -> None:
    """The fallback boot, counting a rollback for the first time: pin its version unless a pin is there."""
    try:
        if pin.read() is not None:
            return
    except pin.PinError as e:
        log.critical("cannot read the update-loop pin: %s", e)
        return
    pin_failed_version(version, "failed its first-boot gate and was rolled back")


def release_pin(reason: str) -> None:
    """Remove the pin (an update passed its gate); logged, never raised."""
    try:
        had = pin.unpin()
    except pin.PinError as e:
        log.error("cannot remove the update-loop pin: %s", e)  # noqa: TRY400
        return
    if had is not None:
        log.warning("update-loop pin of %s removed: %s", had.version, reason)


def pin_state() -> tuple[int, dict[str, Any] | None]:
    """``piccolod_update_pinned`` and the health document's ``update_pin`` from the file itself."""
    try:
        found = pin.read()
    except pin.PinError as e:
        return 0, {"error": str(e)}
    if found is None:
        return 0, None
    return int(found.effective), {"version": found.version, "effective": found.effective, "path": found.path}


def publish_pin(daemon: Daemon) -> None:
    value, doc = pin_state()
    daemon.metrics.update_pinned(value)
    daemon.state.update(extra={"update_pin": doc})


def take_baseline(daemon: Daemon, trigger: str, status: EngineStatus) -> bl.Baseline:
    """Run every gate check once and keep the answers in the journal as the baseline."""
    from piccolod.gatehook import detect_slot  # the gate hook imports this module

    policy = daemon.policy
    started = time.time()
    ran = Assessor().assess(policy, None, phase=Phase.GATE)
    slot = detect_slot(policy)
    found = bl.of_results(
        ran.results,
        version=rec.os_version(),
        taken_at=started,
        boot_id=daemon.facts.boot_id,
        slot=slot.name,
        trigger=trigger,
        target_version=status.offered_version,
    )
    store = Store.load(Path(policy.agent.state_dir))
    store.put_baseline(found)
    failing = [c.component for c in found.checks if c.state != "passed"]
    log.info(
        "baseline taken (%s, %s -> %s): %d checks, failing: %s",
        trigger,
        found.version,
        found.target_version or "?",
        len(found.checks),
        ", ".join(failing) or "none",
    )
    return found


def _engine_doc(seen: Seen) -> dict[str, Any]:
    st = seen.status
    return {
        "current_op": str(st.current_op) if st else None,
        "new_version": st.offered_version if st else None,
        "error": seen.error,
        "pinned_version_applied": seen.pinned_applied,
    }


def start_watcher(daemon: Daemon) -> Watcher:
    def baseline(trigger: str, status: EngineStatus) -> None:
        take_baseline(daemon, trigger, status)

    watcher = Watcher(
        baseline,
        wait=daemon.stopping.wait,
        on_change=lambda seen: daemon.state.update(extra={"update_engine": _engine_doc(seen)}),
    )
    watcher.start()
    return watcher
