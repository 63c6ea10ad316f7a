"""Run scenarios, up to ``jobs`` machines at once (two on a two-core host: each VM has one vCPU), with a
progress line per event and one result per scenario. A failed scenario keeps its run directory (console
per boot, journal per boot, QEMU and swtpm logs; the disk images too with ``keep``)."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    standin: Standin,
    scenarios: Sequence[Scenario],
    out: Path,
    accel: str,
    *,
    jobs: int = 2,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> list[Outcome]:
    lock = threading.Lock()

    def tell(msg: str) -> None:
        with lock:
            say(msg)

    def one(s: Scenario) -> Outcome:
        where = out / s.name
        shutil.rmtree(where, ignore_errors=True)
        t0 = time.monotonic()
        notes = Notes()
        m: Machine | None = None
        ok, message = False, ""
        try:
            m = Machine(
                standin, where, accel, say=lambda msg: tell(f"  {standin.model.name}/{s.name}: {msg}")
            )
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
                if not ok:
                    with contextlib.suppress(Exception):  # the machine may be gone; the logs are a bonus
                        m.save_journal()
                m.close()
        boots = len(m.boots) if m else 0
        ready = [b.ready_seconds for b in m.boots if b.ready_seconds] if m else []
        o = Outcome(
            s.name, ok, time.monotonic() - t0, message, notes.values, boots, None, ready, standin.model.name
        )
        if not keep:
            for image in where.glob("*.raw"):
                image.unlink()
        if ok and not keep:
            shutil.rmtree(where, ignore_errors=True)
        else:
            o.logs = where
        tell(line(o))
        return o

    longest_first = sorted(scenarios, key=lambda s: -s.minutes)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = dict(zip((s.name for s in longest_first), pool.map(one, longest_first), strict=True))
    return [done[s.name] for s in scenarios]


def line(o: Outcome) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in o.notes.items())
    ready = f", READY {' / '.join(f'{r:.0f}s' for r in o.ready)}" if o.ready else ""
    head = f"{'ok  ' if o.ok else 'FAIL'} {o.label:<31} {o.seconds:5.0f}s  {o.boots} boot(s){ready}"
    tail = f"  ({extra})" if extra else ""
    why = f"\n     {o.message}" + (f"\n     logs: {o.logs}" if o.logs else "") if not o.ok else ""
    return head + tail + why
