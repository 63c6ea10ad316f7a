"""Run scenarios, up to ``jobs`` machines at once (two on a two-core host: each VM has one vCPU), with a
progress line per event and one result per scenario. A failed scenario keeps its run directory (console
per boot, journal per boot, QEMU and swtpm logs; the disk images too with ``keep``).

``jobs`` may be a callable, asked before each start: a caller that shares the host (the test suite runs
the scenarios beside its other tests) starts with one machine at a time and allows two once it only waits.
An interruption (Ctrl-C, or SIGTERM turned into one by the command) ends every running machine before it
propagates, so no QEMU or swtpm outlives the run."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from piccolo_build.errors import PiccoloError
from piccolo_build.vm.machine import Failed, Machine
from piccolo_build.vm.scenarios import Notes, Scenario
from piccolo_build.vm.standin import Standin


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    message: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    boots: int = 0
    logs: Path | None = None
    ready: list[float] = field(default_factory=list)  # QEMU start to piccolod READY, per boot that saw it
    model: str = ""  # the stand-in's boot model ("" for --image)

    @property
    def label(self) -> str:
        """``model/scenario``: what the output lines and the reports call it."""
        return f"{self.model}/{self.name}" if self.model else self.name


def run_scenarios(
    standins: Standin | Sequence[Standin],
    scenarios: Sequence[Scenario],
    out: Path,
    accel: str,
    *,
    jobs: int | Callable[[], int] = 2,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> list[Outcome]:
    """Every scenario on every stand-in (one per boot model), in one pool, the longest first; the outcomes
    in the order asked, model by model. Run directories are ``out/<model>/<scenario>``."""
    machines = [standins] if isinstance(standins, Standin) else list(standins)
    lanes = _Lanes(out, accel, keep, say)
    work = [(st, sc) for st in machines for sc in scenarios]
    pending = sorted(work, key=lambda w: -w[1].minutes)
    running: list[threading.Thread] = []
    try:
        while pending or running:
            running = [t for t in running if t.is_alive()]
            while pending and len(running) < max(1, jobs() if callable(jobs) else jobs):
                t = threading.Thread(target=lanes.run, args=pending.pop(0), daemon=True)
                t.start()
                running.append(t)
            if running:
                running[0].join(0.5)
    except BaseException:
        lanes.stop()
        raise
    return [lanes.done[st.model.name, sc.name] for st, sc in work]


class _Lanes:
    """The machines of one run: each scenario on its own thread, and the ones alive, to end them all on
    an interruption."""

    def __init__(self, out: Path, accel: str, keep: bool, say: Callable[[str], None]) -> None:
        self.out, self.accel, self.keep, self.say = out, accel, keep, say
        self.lock = threading.Lock()
        self.live: dict[int, Machine] = {}  # by id: a Machine is a dataclass, not hashable
        self.stopping = threading.Event()
        self.done: dict[tuple[str, str], Outcome] = {}

    def tell(self, msg: str) -> None:
        with self.lock:
            self.say(msg)

    def stop(self) -> None:
        self.stopping.set()
        for _sweep in range(2):  # a lane may have started a boot while the first sweep ran
            with self.lock:
                machines = list(self.live.values())
            for m in machines:
                with contextlib.suppress(Exception):
                    m.close()
            time.sleep(1)

    def _start(self, standin: Standin, s: Scenario, where: Path) -> Machine:
        label = f"{standin.model.name}/{s.name}"
        m = Machine(standin, where, self.accel, say=lambda msg: self.tell(f"  {label}: {msg}"))
        with self.lock:
            self.live[id(m)] = m
        if self.stopping.is_set():
            raise Failed("interrupted before it started")
        return m

    def _end(self, m: Machine, ok: bool) -> None:
        with self.lock:
            self.live.pop(id(m), None)
        if not ok and not self.stopping.is_set():
            with contextlib.suppress(Exception):  # the machine may be gone; the logs are a bonus
                m.save_journal()
        m.close()

    def run(self, standin: Standin, s: Scenario) -> None:
        where = self.out / standin.model.name / s.name
        shutil.rmtree(where, ignore_errors=True)
        t0 = time.monotonic()
        notes = Notes()
        m: Machine | None = None
        ok, message = False, ""
        try:
            m = self._start(standin, s, where)
            s.run(m, notes)
            ok = True
        except Failed as exc:
            message = str(exc)
        except (PiccoloError, OSError) as exc:
            message = f"error: {exc}"
        except Exception as exc:
            message = f"error: {type(exc).__name__}: {exc}"
            (where / "traceback.txt").write_text(traceback.format_exc())
        finally:
            if m is not None:
                self._end(m, ok)
        boots = len(m.boots) if m else 0
        ready = [b.ready_seconds for b in m.boots if b.ready_seconds] if m else []
        o = Outcome(
            s.name, ok, time.monotonic() - t0, message, notes.values, boots, None, ready, standin.model.name
        )
        if not self.keep:
            for image in where.glob("*.raw"):
                image.unlink()
        if ok and not self.keep:
            shutil.rmtree(where, ignore_errors=True)
        else:
            o.logs = where
        self.tell(line(o))
        self.done[standin.model.name, s.name] = o


def line(o: Outcome) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in o.notes.items())
    ready = f", READY {' / '.join(f'{r:.0f}s' for r in o.ready)}" if o.ready else ""
    head = f"{'ok  ' if o.ok else 'FAIL'} {o.label:<31} {o.seconds:5.0f}s  {o.boots} boot(s){ready}"
    tail = f"  ({extra})" if extra else ""
    why = f"\n     {o.message}" + (f"\n     logs: {o.logs}" if o.logs else "") if not o.ok else ""
    return head + tail + why
