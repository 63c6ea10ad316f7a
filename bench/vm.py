"""Benchmark of ``piccolo-build vm-test`` on the stand-in machine.

Run (root): ``.venv/bin/python bench/vm.py [--clean] [--jobs 2] [--scenario NAME ...]``.

Figures: the stand-in's build (``--clean`` first removes the whole cache, kernel download and debootstrap
included; without it the build is a cache hit, or a rebuild when an input changed), the accelerator and
why, then per scenario its wall time, boots and the seconds from the guest kernel's start to piccolod's
``READY=1`` in each boot, and the total of build and scenarios. The issue's targets on 2 cores under
TCG: a boot to READY under 40 s, the six scenarios with the build under 15 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from piccolo_build.config import load_config  # noqa: E402
from piccolo_build.vm import qemu, runner, scenarios, standin  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the stand-in cache first (a clean build)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--scenario", action="append", choices=list(scenarios.BY_NAME))
    args = ap.parse_args()
    cache = standin.default_cache()
    if args.clean:
        shutil.rmtree(cache, ignore_errors=True)
    t0 = time.monotonic()
    cfg = load_config(ROOT / "piccolo.yaml", env={})
    s = standin.build(cfg, cache, say=lambda m: print(f"  {m}", flush=True))
    how = ("built" if s.built else "cached") + (", clean" if args.clean else "")
    print(f"stand-in build: {s.seconds:.1f}s ({how})")
    out = Path(tempfile.mkdtemp(prefix="bench-vm."))
    accel, why = qemu.choose_accel(s.vmlinuz, s.initrd, out)
    print(f"accelerator: {accel} ({why})")
    chosen = [scenarios.BY_NAME[n] for n in args.scenario] if args.scenario else list(scenarios.SCENARIOS)
    t1 = time.monotonic()
    outcomes = runner.run_scenarios(s, chosen, out, accel, jobs=args.jobs, say=lambda m: print(m, flush=True))
    t2 = time.monotonic()
    ready = sorted(r for o in outcomes for r in o.ready)
    print("\nscenario                  seconds  boots  READY (s after the kernel started)")
    for o in outcomes:
        print(f"{o.name:<24} {o.seconds:8.0f}  {o.boots:5d}  {' '.join(f'{r:.0f}' for r in o.ready)}"
              f"{'' if o.ok else '  FAILED: ' + o.message}")  # fmt: skip
    if ready:
        print(
            f"boot to READY: min {ready[0]:.0f}s, median {ready[len(ready) // 2]:.0f}s, max {ready[-1]:.0f}s"
        )
    print(f"scenarios: {t2 - t1:.0f}s with {args.jobs} VM(s) at once; build + scenarios: {t2 - t0:.0f}s")
    shutil.rmtree(out, ignore_errors=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
