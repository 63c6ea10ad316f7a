"""``piccolod serve`` watching update_engine: the baseline before an update, and the pin's second line.

A thread polls :func:`piccolod.updates.engine.query` (``update_engine_client -status``) rather than
listening for update_engine's D-Bus ``StatusUpdate`` signal: the standard library speaks no D-Bus, the
client is what the base image has, and one short process every :data:`IDLE_SECONDS` costs little
(``bench/watch.py`` measures it). Its pace:

- every :data:`IDLE_SECONDS` while update_engine is idle or waits for a reboot;
- every :data:`BUSY_SECONDS` while it checks for, downloads, verifies or finalizes an update, so the
  moment it has one is seen at once;
- when the client is missing or fails, the pause doubles from :data:`IDLE_SECONDS` up to
  :data:`MAX_BACKOFF_SECONDS` (one log line per change of error, not one per poll).

What it does with what it sees:

- **the baseline** (:mod:`piccolod.baseline`): at the first sign of an update being applied to the other
  slot (``UPDATE_AVAILABLE``, ``DOWNLOADING``, ``VERIFYING``, ``FINALIZING``) the agent runs every gate
  check once and writes the answers to its journal; when update_engine reports
  ``UPDATE_STATUS_UPDATED_NEED_REBOOT`` it takes it again (the freshest answers before the reboot; a
  reboot manager may reboot at once, which the first one covers). Once per update version and boot.
  An agent that starts while an update waits for its reboot takes one too.
- **the pin's second line**: should update_engine have applied the pinned version anyway (a server that
  offers it whatever the machine says it runs), the agent logs it as critical, shows it in the health
  document and asks update_engine to forget it (``-reset_status``, allowed from NEED_REBOOT: no reboot
  manager sees an update waiting). The other slot keeps what the postinstall step gave it, so a reboot
  for another reason still tries it once, and its gate then fails and rolls back again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from piccolod.updates import engine, pin
from piccolod.updates.engine import EngineError, EngineStatus, Op

log = logging.getLogger("piccolod.updates")

IDLE_SECONDS = 10.0
BUSY_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0
TRIGGER_ACTIVITY = "update_activity"
TRIGGER_NEED_REBOOT = "need_reboot"


@dataclass
class Seen:
    """What the watcher knows, for the health document and the tests."""

    status: EngineStatus | None = None
    error: str | None = None
    polls: int = 0
    baselines: int = 0
    pinned_applied: str | None = None  # a pinned version update_engine applied anyway


class Watcher:
    """One poll at a time (:meth:`step`), in a thread of its own (:meth:`start`).

    ``take_baseline(trigger, status)`` runs the gate checks and writes the baseline; ``read_pin`` says
    which version is pinned (None: none); ``query`` and ``reset`` speak to update_engine; ``wait(s)``
    pauses and returns True when the agent is stopping."""

    def __init__(
        self,
        take_baseline: Callable[[str, EngineStatus], None],
        *,
        wait: Callable[[float], bool],
        query: Callable[[], EngineStatus] = engine.query,
        reset: Callable[[], None] = engine.reset,
        read_pin: Callable[[], str | None] | None = None,
        on_change: Callable[[Seen], None] | None = None,
    ) -> None:
        self.take_baseline = take_baseline
        self.wait = wait
        self.query = query
        self.reset = reset
        self.read_pin = read_pin if read_pin is not None else _effective_pin
        self.on_change = on_change
        self.seen = Seen()
        self._failures = 0
        self._taken: set[tuple[str, str]] = set()  # (trigger, version) baselines taken in this process
        self._thread: threading.Thread | None = None

    def step(self) -> float:
        """Poll once and act; the seconds until the next poll."""
        self.seen.polls += 1
        try:
            status = self.query()
        except EngineError as e:
            self._failures += 1
            if str(e) != self.seen.error:
                log.warning("update_engine's status: %s (asking again with backoff)", e)
                self.seen.error = str(e)
                self._changed()
            return min(IDLE_SECONDS * 2.0 ** min(self._failures, 16), MAX_BACKOFF_SECONDS)
        if self.seen.error is not None:
            log.info("update_engine answers again: %s", status.current_op)
        self._failures = 0
        changed = (
            self.seen.error is not None
            or self.seen.status is None
            or (self.seen.status.current_op is not status.current_op)
        )
        self.seen.error = None
        self.seen.status = status
        op = status.current_op
        if op in engine.APPLYING:
            self._baseline(TRIGGER_ACTIVITY, status)
        elif op is Op.UPDATED_NEED_REBOOT:
            self._baseline(TRIGGER_NEED_REBOOT, status)
            self._second_line(status)
        if changed:
            self._changed()
        return BUSY_SECONDS if op in engine.BUSY else IDLE_SECONDS

    def _baseline(self, trigger: str, status: EngineStatus) -> None:
        key = (trigger, status.offered_version)
        if key in self._taken:
            return
        self._taken.add(key)
        log.info(
            "update_engine: %s %s: taking the gate's baseline", status.current_op, status.offered_version
        )
        try:
            self.take_baseline(trigger, status)
        except Exception:  # the watcher goes on: the gate then finds no baseline (inconclusive)
            log.exception("taking the baseline failed")
            return
        self.seen.baselines += 1

    def _second_line(self, status: EngineStatus) -> None:
        pinned = self.read_pin()
        if not pinned or status.offered_version != pinned or self.seen.pinned_applied == pinned:
            return
        self.seen.pinned_applied = pinned
        log.critical(
            "update_engine applied %s, the version pinned after its rollback: the update server offered it "
            "anyway; asking update_engine to forget it (update_engine_client -reset_status)",
            pinned,
        )
        try:
            self.reset()
        except EngineError as e:
            log.critical("could not reset update_engine's status: %s", e)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.seen)

    def run(self) -> None:
        while True:
            pause = self.step()
            if self.wait(pause):
                return

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="update-watch", daemon=True)
        self._thread.start()
        return self._thread


def _effective_pin() -> str | None:
    try:
        found = pin.read()
    except pin.PinError:
        return None
    return found.version if found is not None and found.effective else None
