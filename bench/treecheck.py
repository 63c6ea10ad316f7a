"""Benchmark of the in-tree check (``piccolo-build check --tree``, the build's ``tree-check`` step).

Run: ``.venv/bin/python bench/treecheck.py [--runs 3]``. Offline; clones the real flatcar/scripts trees
(``$PICCOLO_FLATCAR_SCRIPTS``, as the tests) once and checks the default configuration's packages in
every tag, rendered for the tag's Python. Prints, per tag: the median time to read the tree's facts and
judge it (the verdict ``plan`` and the build's checkout step compute), the first check with an empty
pkgcheck cache (cold), the median of RUNS checks with that cache filled (warm), the peak resident memory
of those pkgcheck runs, and whether the tag passed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from piccolo_build import releases  # noqa: E402
from piccolo_build.commands.build_cmd import facts  # noqa: E402
from piccolo_build.config import load_config  # noqa: E402
from piccolo_build.overlay import overlay_files  # noqa: E402
from piccolo_build.tree import read_tree_facts  # noqa: E402
from piccolo_build.treecheck import check_tree  # noqa: E402
from tests.fixtures.flatcar import TAGS, scripts_url  # noqa: E402


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(ROOT / "piccolo.yaml")
    plan_facts = facts(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-treecheck-") as tmp:
        base = Path(tmp)
        repo = base / "scripts"
        git(base, "clone", "--quiet", "--no-checkout", scripts_url(), str(repo))
        for tag in TAGS:
            git(repo, "checkout", "--quiet", "--force", "--detach", tag)
            # The verdict read from the tree (what `plan` and the checkout step compute), then the
            # overlay rendered for the tree's Python, as the build renders it.
            judged = []
            for _ in range(args.runs):
                started = time.monotonic()
                tree_facts = read_tree_facts(repo)
                releases.judge_checkout(repo, plan_facts, tree_facts)
                judged.append(time.monotonic() - started)
            print(f"{tag:16} facts and verdict: median {statistics.median(judged):5.2f} s ({args.runs} runs)")
            files = overlay_files(cfg, tree_facts.python_compat)
            cache = base / f"cache-{tag}"
            started = time.monotonic()
            result = check_tree(repo, files, ["amd64"], cache)
            cold = time.monotonic() - started
            warm = []
            for _ in range(args.runs):
                started = time.monotonic()
                check_tree(repo, files, ["amd64"], cache)
                warm.append(time.monotonic() - started)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
            verdict = "passes" if result.ok else f"fails: {result.findings[0]}"
            print(
                f"{tag:16} cold {cold:5.1f} s, warm median {statistics.median(warm):5.1f} s "
                f"({args.runs} runs), pkgcheck peak RSS so far {peak} MiB; {verdict}"
            )


if __name__ == "__main__":
    main()
