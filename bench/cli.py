"""Benchmark: ``piccolo-build --help`` wall time (target < 0.4 s) and a full render (target < 1 s).

Run: ``.venv/bin/python bench/cli.py [--runs N]``. Each figure is measured in a fresh process (what a
user waits for), reported as the median and the best of N runs; the in-process render time (config
load + overlay plan + atomic write) is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "piccolo_build"]
TARGETS = {"help": 0.4, "render": 1.0}


def wall(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def in_process_render(runs: int, out: Path) -> list[float]:
    sys.path.insert(0, str(ROOT))
    from piccolo_build.config import load_config
    from piccolo_build.overlay import overlay_files
    from piccolo_build.render import write_tree

    times = []
    for i in range(runs):
        start = time.perf_counter()
        write_tree(overlay_files(load_config(ROOT / "piccolo.yaml")), out / f"o{i}")
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float], target: float | None) -> None:
    med = statistics.median(times)
    verdict = "" if target is None else (" ok" if med < target else f" OVER TARGET {target:g} s")
    print(f"{name:<34} median {med:.3f} s  best {min(times):.3f} s  (n={len(times)}){verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        report("piccolo-build --help", wall([*CLI, "--help"], args.runs), TARGETS["help"])
        report("piccolo-build render --help", wall([*CLI, "render", "--help"], args.runs), TARGETS["help"])
        fresh = []
        for i in range(args.runs):
            fresh += wall([*CLI, "render", "-o", str(out / f"cli{i}")], 1)
        report("piccolo-build render (new output)", fresh, TARGETS["render"])
        report(
            "piccolo-build render (no change)",
            wall([*CLI, "render", "-o", str(out / "cli0")], args.runs),
            None,
        )
        report("render in process (load+plan+write)", in_process_render(args.runs, out), None)


if __name__ == "__main__":
    main()
