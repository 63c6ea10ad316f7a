"""``piccolo-build check``'s part for ``monitoring/``: is the committed directory what a fresh render of
the configuration makes, and does Prometheus accept the rules (``promtool check rules``)?"""

from __future__ import annotations

import tempfile
from pathlib import Path

from piccolo_build.check import Step, diff_tree
from piccolo_build.errors import PiccoloError
from piccolo_build.gentoo import OverlayFile
from piccolo_build.monitoring.render import MARKER, RULES
from piccolo_build.run import run

PROMTOOL_HINT = "promtool is in Debian's prometheus package (python3 build.py check installs it)"


def check_monitoring(files: list[OverlayFile], directory: Path) -> list[Step]:
    """The steps ``monitoring diff`` and ``promtool check rules``."""
    missing = "" if directory.is_dir() else f"{directory}: no such directory\n"
    diff = diff_tree(files, directory, MARKER)
    return [Step("monitoring diff", not diff and not missing, missing + diff), promtool_check(files)]


def promtool_check(files: list[OverlayFile]) -> Step:
    name = "promtool check rules"
    rules = next(f for f in files if f.path == RULES)
    with tempfile.TemporaryDirectory(prefix="piccolo-monitoring.") as tmp:
        path = Path(tmp) / RULES.name
        path.write_bytes(rules.content)
        try:
            result = run(["promtool", "check", "rules", path], check=False)
        except PiccoloError as exc:
            return Step(name, False, f"{exc.message}: {PROMTOOL_HINT}")
    output = (result.stdout + result.stderr).strip()
    return Step(name, result.returncode == 0, output if result.returncode else "")
