"""The agent's life: start the API, pass the gate, then assess on a schedule until told to stop.

:meth:`Daemon.run` is the whole startup sequence, in this order:

1. the policy is already loaded (by ``piccolod serve``) and handed to the constructor;
2. the HTTP API starts (so the ``api`` check, and people, can reach it from the first second);
3. the **gate hook** runs: a callable ``gate(daemon)`` that decides when ``READY=1`` is sent. The default,
   :func:`ready_after_first_assessment`, runs one assessment and then sends ``READY=1``; the first-boot
   gate replaces it (it may assess repeatedly, update :class:`~piccolod.state.State`, count outcomes in
   :class:`~piccolod.metrics.Metrics`, call :meth:`Daemon.ready` or never do so);
4. the runtime loop: each check every ``interval_seconds`` of its own (``check_interval_seconds`` unless
   it says otherwise; checks that are due together run together, in one assessment that carries the
   others' last results), through the :class:`~piccolod.hysteresis.Hysteresis` filter, one log record
   per check that ran, metrics, ``STATUS=``, and ``WATCHDOG=1`` from this same loop when systemd asked
   for a watchdog. After an assessment, at most every ``refresh_seconds``, the **refresh hook**
   (``piccolod serve``'s: :func:`piccolod.gatehook.refresh_machine`) re-reads what can change under a
   running agent: the slot table (update-engine marks a slot good, or stages an update in the other
   one), the update group, the update-loop pin.

Every declared check that does not run is logged once at the start, with why.

SIGTERM/SIGINT send ``STOPPING=1``, end any wait at once (an assessment in progress is cancelled, not
waited for: :meth:`Assessor.cancel <piccolod.assess.Assessor.cancel>`), kill the checks' helper processes,
stop the API and return 0, within about a second whatever the checks are doing. Checks that are still
running are left to their daemon threads, which do not hold up the process's exit.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import FrameType

from piccolod import document, logs, notify, osinfo
from piccolod import run as child
from piccolod.api import ApiServer, Response, listen_socket, publish, unpublish
from piccolod.assess import Assessment, Assessor, Cancelled, verdict
from piccolod.checkspec import Phase
from piccolod.hysteresis import Hysteresis, Rule
from piccolod.metrics import CONTENT_TYPE, GateOutcome, Metrics
from piccolod.policy import PolicyFile
from piccolod.result import CheckResult
from piccolod.state import State

log = logging.getLogger("piccolod")

HEALTH_PATH = "/api/v1/system/health"
REFRESH_SECONDS = 60.0
GateHook = Callable[["Daemon"], None]
RefreshHook = Callable[["Daemon"], None]


def ready_after_first_assessment(daemon: Daemon) -> None:
    """The default gate: no first-boot gate, ``READY=1`` after the first assessment."""
    daemon.assess()
    daemon.state.update(startup_health_check="skipped")
    daemon.metrics.gate_outcome(GateOutcome.SKIPPED)
    daemon.ready()


def status_line(assessment: Assessment) -> str:
    total = len(assessment.results)
    good = sum(1 for r in assessment.results if r.healthy)
    line = f"{assessment.status}: {good}/{total} components pass"
    failing = assessment.failing()
    return line + (f" (failing: {', '.join(failing)})" if failing else "")


class Daemon:
    def __init__(
        self,
        policy: PolicyFile,
        *,
        assessor: Assessor | None = None,
        gate: GateHook = ready_after_first_assessment,
        listener: socket.socket | None = None,
        facts: document.Facts | None = None,
        env: Mapping[str, str] | None = None,
        policy_error: str | None = None,
        bind: bool = True,
        refresh: RefreshHook | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        """``policy_error``: why the configured policy was replaced by a fallback (shown in the health
        document). ``bind=False`` starts no API (``piccolod gate --dry-run`` beside a running agent).
        ``refresh`` runs in the runtime loop after an assessment, at most every ``refresh_seconds``."""
        hp = policy.health_policy
        self.policy = policy
        self.assessor = assessor if assessor is not None else Assessor()
        self.gate = gate
        self.env = env
        self.facts = facts if facts is not None else document.current_facts(hp.checks.storage.mounts)
        self.state = State(self.facts, hp.checked(), policy_error, hp.catalog())
        self.metrics = Metrics(hp.checked(), hp.catalog(), interval=hp.runtime.check_interval_seconds)
        self.metrics.machine(os=osinfo.read())
        self.refresh = refresh
        self.refresh_seconds = refresh_seconds
        self._last_refresh = time.monotonic()
        self.hysteresis = Hysteresis(hp.runtime.failure_threshold, rules=self._rule)
        self.stopping = threading.Event()
        self.is_ready = threading.Event()
        self.watchdog = notify.watchdog_seconds(env)
        # Bound now; a busy or bad address is logged and the agent goes on without its API (the api
        # check then fails honestly): nothing may stop the slot decision, least of all on a marked slot.
        self._listener = listener
        self.api_error: str | None = None
        if listener is None and bind:
            try:
                self._listener = listen_socket(policy.agent.listen)
            except OSError as exc:
                self.api_error = f"cannot listen on {policy.agent.listen}: {exc}"
                log.error("%s: running without the HTTP API", self.api_error)  # noqa: TRY400
        self.server: ApiServer | None = None
        self._last_assessment = 0.0
        self._last_ping = 0.0
        self._due: dict[str, float] = {}  # when each check runs next at runtime (time.monotonic())
        self._last: dict[str, CheckResult] = {}  # each check's last raw result, gate or runtime

    # --- what the gate hook may use -----------------------------------------------------------------

    def notify(self, *lines: str) -> bool:
        return notify.notify(*lines, env=self.env)

    def ready(self, status: str | None = None) -> None:
        """Send ``READY=1`` (once) with a status line."""
        if self.is_ready.is_set():
            return
        self.is_ready.set()
        text = status or (status_line(self.state.assessment) if self.state.assessment else "ready")
        self.notify(notify.READY, f"STATUS={text}")
        log.info("ready: %s", text)

    def _rule(self, name: str) -> Rule:
        eff = self.policy.health_policy.options(name)
        return Rule(eff.failure_threshold, eff.success_threshold, eff.start_period_seconds)

    def assess(
        self,
        *,
        hysteresis: bool = True,
        phase: Phase = Phase.RUNTIME,
        stop_on_required_failure: bool = False,
        names: tuple[str, ...] | None = None,
    ) -> Assessment:
        """Run one assessment, log each check, publish it to metrics, state and systemd; return it raw.

        With ``hysteresis=False`` (the startup gate) failures count at once and the failure counters
        of the runtime filter are left alone. ``names``: run only these checks (those due); the others
        carry their last result into the assessment.
        """
        hp = self.policy.health_policy
        if names is not None:  # the checks that never run in this phase are reported skipped
            names = (*names, *(n for n in hp.checked() if not hp.runs_in(n, phase) and n not in names))
        ran = self.assessor.assess(
            self.policy, names, phase=phase, stop_on_required_failure=stop_on_required_failure
        )
        now = time.monotonic()
        fresh = {r.component for r in ran.results if r.counted}
        for res in ran.results:
            logs.log_check(res, self.facts.boot_id)
            self._last[res.component] = res
            if res.component in fresh:
                self._due[res.component] = now + hp.options(res.component).interval_seconds
        raw = ran if names is None else self._whole(ran)
        effective = self.hysteresis.apply(raw, fresh) if hysteresis else raw
        failures = dict(self.hysteresis.failures) if hysteresis else None
        self.metrics.observe(effective, failures, fresh)
        self.state.update(assessment=effective, raw=raw)
        self._last_assessment = now
        self.notify(f"STATUS={status_line(effective)}")
        self.ping_watchdog(force=True)
        return raw

    def _whole(self, ran: Assessment) -> Assessment:
        """``ran`` (some checks) completed with the last result of every other check the policy runs."""
        hp = self.policy.health_policy
        results = tuple(self._last[n] for n in hp.checked() if n in self._last)
        return replace(ran, status=verdict(results, ran.optional_all_failed), results=results)

    def due(self) -> tuple[tuple[str, ...], float]:
        """The runtime checks due now, and (when none is) the seconds until the next one is."""
        hp = self.policy.health_policy
        names = [n for n in hp.checked() if hp.runs_in(n, Phase.RUNTIME)]
        now = time.monotonic()
        ready = tuple(n for n in names if self._due.get(n, 0.0) <= now)
        if ready or not names:
            return ready, 0.0 if ready else hp.runtime.check_interval_seconds
        return (), min(self._due[n] for n in names) - now

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``, keeping the watchdog fed; True if the agent is stopping."""
        end = time.monotonic() + seconds
        while not self.stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            step = min(left, self.watchdog / 2) if self.watchdog else left
            if self.stopping.wait(step):
                break
            self.ping_watchdog()
        return self.stopping.is_set()

    def ping_watchdog(self, *, force: bool = False) -> None:
        if self.watchdog is None:
            return
        now = time.monotonic()
        if force or now - self._last_ping >= self.watchdog / 4:
            self._last_ping = now
            self.notify(notify.WATCHDOG)

    def stop(self) -> None:
        """Ask the agent to stop (signal handlers and tests call this)."""
        if not self.stopping.is_set():
            self.stopping.set()
            self.assessor.cancel()
            self.notify(notify.STOPPING)

    # --- the sequence -------------------------------------------------------------------------------

    def start_api(self) -> ApiServer | None:
        """Serve the API on the socket bound in the constructor; None when there is none.

        The server is published for this process's ``api`` check (its private probe channel), and so is
        the reason when there is no server because the address could not be bound."""
        if self._listener is None:
            if self.api_error is not None:
                publish(self.policy.agent.listen, self.api_error)
            return None
        state, metrics = self.state, self.metrics

        def health() -> Response:
            code, body = state.health
            return Response(code, body)

        routes = {
            HEALTH_PATH: health,
            "/metrics": lambda: Response(200, metrics.render(), CONTENT_TYPE),
            "/livez": lambda: Response(200, b"ok", "text/plain; charset=utf-8"),
        }
        self.server = ApiServer(self._listener, routes)
        self.server.start()
        self.server.publish(self.policy.agent.listen)
        host, port = self.server.address
        log.info("API listening on %s port %d", host, port)
        return self.server

    def loop(self) -> None:
        while not self.stopping.is_set():
            names, wait = self.due()
            if not names:
                if self.sleep(wait):
                    break
                continue
            try:
                self.assess(names=names)
            except Cancelled:
                break
            self.refresh_if_due()

    def refresh_if_due(self) -> None:
        """Run the refresh hook when ``refresh_seconds`` have passed since the last run (or the start);
        a hook that raises is logged and tried again next time: the loop goes on."""
        if self.refresh is None or time.monotonic() - self._last_refresh < self.refresh_seconds:
            return
        self._last_refresh = time.monotonic()
        try:
            self.refresh(self)
        except Exception:
            log.exception("refreshing the machine facts failed")

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            self._install_signals()
        logs.log_disabled(self.policy.health_policy.catalog())
        try:
            self.start_api()
            try:
                self.gate(self)
            except Cancelled:
                if not self.stopping.is_set():
                    raise
            self.loop()
        finally:
            self.stop()
            killed = child.kill_all()
            if killed:
                log.info("killed %d check helper process(es) still running", killed)
            if self.server is not None:
                self.server.stop()
            if self.api_error is not None:
                unpublish(self.policy.agent.listen, self.api_error)
            log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
