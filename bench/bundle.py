"""Benchmark of ``bundle``: agent sdist build time and size, dependency rendering and distfile verification.

Run: ``.venv/bin/python bench/bundle.py [--runs 20] [--distdir DIR]``. Offline except for the first
download of the locked sdists into DIR (a temporary directory when not given). Prints:

1. the agent sdist build time in memory (median and max over ``--runs``), its size, and whether all
   runs gave the same bytes;
2. the time to render every dependency package (ebuild, Manifest, metadata.xml) from the lock;
3. the time to verify every locked sdist against the lock (size and three digests).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piccolo_build import bundle, deps
from piccolo_build.config import BuildConfig
from piccolo_build.lock import fetch_distfiles, load_lock, verify_distfiles
from piccolod.model import default


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--distdir", type=Path, default=None)
    args = parser.parse_args()
    cfg = default(BuildConfig)
    lock = load_lock()

    outputs: set[bytes] = set()
    times = _timed(lambda: outputs.add(bundle.sdist_bytes(cfg, lock=lock, epoch=1_700_000_000)), args.runs)
    size = len(next(iter(outputs)))
    print(
        f"sdist: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms, "
        f"{size} bytes, {'identical' if len(outputs) == 1 else 'DIFFERENT'} over {args.runs} runs"
    )

    render = _timed(lambda: deps.dependency_files(cfg, lock), args.runs)
    print(f"dependency packages ({len(lock.packages)}): median {statistics.median(render) * 1000:.1f} ms")

    with tempfile.TemporaryDirectory(prefix="bench-distfiles.") as tmp:
        distdir = args.distdir or Path(tmp)
        fetch_distfiles(lock, distdir)
        total = sum(p.size for p in lock.packages)
        verify = _timed(lambda: verify_distfiles(lock, distdir), max(3, args.runs // 4))
        print(
            f"verify distfiles ({len(lock.packages)} files, {total} bytes): "
            f"median {statistics.median(verify) * 1000:.1f} ms"
        )
    return 0 if len(outputs) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
