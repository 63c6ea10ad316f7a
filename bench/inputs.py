"""Benchmark: what hostile configuration files cost the real programs (target: under 2 s and 200 MB).

Run: ``.venv/bin/python bench/inputs.py [--root CHECKOUT] [--timeout S]``. For each case of
``tests/hostile.py`` (the alias bomb, a recursive alias, ``!!bool maybe``, a 5,000-digit integer, deep
nesting, ...) it runs ``piccolo-build config validate FILE`` and ``piccolod check --config FILE`` as
fresh processes and prints the exit code, CPU seconds, wall seconds and peak resident memory (the
kernel's ``wait4`` accounting of that process), and the number of stderr lines. ``--root`` runs the
programs of another checkout (for a before/after comparison: ``git worktree add /tmp/before <commit>``);
a process still running after ``--timeout`` seconds is killed and shown as such.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import hostile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose programs run")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(args.root.resolve())
    programs = {"config validate": hostile.validate, "piccolod check": hostile.check}
    worst_cpu, worst_rss = 0.0, 0
    print(
        f"programs of {args.root.resolve()};"
        f" limits {hostile.LIMIT_SECONDS:g} s, {hostile.LIMIT_BYTES >> 20} MiB"
    )
    print(f"{'case':<26}{'program':<17}{'exit':>5}{'cpu s':>8}{'wall s':>8}{'peak MiB':>10}{'lines':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for case, content in hostile.CASES.items():
            path = Path(tmp) / f"{case}.yaml"
            path.write_bytes(content)
            for name, argv in programs.items():
                m = hostile.measure(argv(path), timeout=args.timeout, cwd=Path(tmp))
                killed = " KILLED" if m.returncode == -9 else ""
                print(
                    f"{case:<26}{name:<17}{m.returncode:>5}{m.cpu_seconds:>8.2f}{m.wall_seconds:>8.2f}"
                    f"{m.peak_rss_bytes / 2**20:>10.1f}{len(m.stderr.splitlines()):>7}{killed}"
                )
                worst_cpu = max(worst_cpu, m.cpu_seconds)
                worst_rss = max(worst_rss, m.peak_rss_bytes)
    verdict = (
        "ok" if worst_cpu < hostile.LIMIT_SECONDS and worst_rss < hostile.LIMIT_BYTES else "OVER THE LIMITS"
    )
    print(f"worst: {worst_cpu:.2f} s of CPU, {worst_rss / 2**20:.1f} MiB peak: {verdict}")


if __name__ == "__main__":
    main()
