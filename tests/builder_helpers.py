"""Helpers shared by the builder's tests: run the real CLI, snapshot a directory tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "piccolo.yaml"
GOLDEN = ROOT / "tests" / "golden"
# What goes into the piccolod sysext for the committed lock, in install order (build_image --base_sysexts).
SYSEXT_PACKAGES = (
    "dev-lang/python&dev-python/asn1crypto&dev-python/pyyaml&dev-python/tpm2-pytss&app-admin/piccolod"
)

# A prefix that starts a program with SIGINT as a terminal gives it. A shell without job control starts
# its background commands with SIGINT ignored (a CI runner may too), children inherit that, and Python
# then leaves it ignored: a Ctrl-C test would wait out the step instead of testing anything.
AT_A_TERMINAL = ("env", "--default-signal=INT")


def cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``piccolo-build`` as a user would (a fresh process); PICCOLO_* from the caller is dropped."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PICCOLO_")}
    return subprocess.run(
        [sys.executable, "-m", "piccolo_build", *map(str, args)],
        cwd=cwd or ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file and directory under ``root``: content, mode, mtime_ns and inode."""
    out: dict[str, tuple[bytes, int, int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(root))] = (content, st.st_mode, st.st_mtime_ns, st.st_ino)
    return out
