"""``piccolo-build check``: is the committed overlay what ``render`` makes, and is it valid?

Steps (each one reported; all run even after a failure):

1. ``diff``: the overlay directory against a render in memory (unified diff; missing, extra and
   mode-changed files).
2. ``systemd-analyze verify``: the rendered units installed where the ebuilds put them (from the
   install layout, :mod:`piccolo_build.layout`), in a root directory with the host's unit files, a
   stand-in ``/usr/bin/piccolod`` and a stand-in ``update-engine.service``: the agent's unit, the guard,
   the start unit, update-engine with its drop-in. Any output on stderr is a failure (unknown keys only
   warn). ``shellcheck`` also runs on the guard's and the start unit's scripts (POSIX sh).
3. ``bash -n`` and ``shellcheck`` on each ebuild. shellcheck runs as bash and skips what ebuild
   syntax makes noise of: SC2034 (variables are read by the package manager) and SC2154 (``PV``,
   ``FILESDIR``, ``PYTHON_USEDEP`` come from the package manager and eclasses).
4. ``pkgcheck scan`` of a standalone repository built around the ebuilds (:mod:`scanrepo`). Fails
   on any error-level result, and on warning- or style-level results for our own packages (they are
   cheap to fix, and catch e.g. unstable keywords or a bad DESCRIPTION). Ignored: info-level results
   and repository-level warnings caused by the scan repository itself (arches without profiles).

Processes run only through :func:`piccolo_build.run.run`.
"""

from __future__ import annotations

import difflib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piccolo_build import layout
from piccolo_build.config import BuildConfig
from piccolo_build.gentoo import ENV_DIR, OverlayFile
from piccolo_build.overlay import UNIT, package_dir
from piccolo_build.render import OVERLAY_MARKER, Marker, read_tree, tree
from piccolo_build.run import run, tool
from piccolo_build.scanrepo import build_scan_repo
from piccolo_build.stage import lay_out
from piccolo_build.treecheck import accepted, pkgcheck_results

SHELLCHECK_EXCLUDES = ("SC2034", "SC2154")
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    output: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "steps": [{"name": s.name, "ok": s.ok, "output": s.output} for s in self.steps],
        }


# --- 1. diff -------------------------------------------------------------------------------------


def diff_tree(files: list[OverlayFile], overlay: Path, marker: Marker = OVERLAY_MARKER) -> str:
    """A unified diff from the overlay on disk (a/) to the fresh render (b/); empty when equal."""
    have = read_tree(overlay)
    want = tree(files, marker)  # with the marker file render writes at the top
    out: list[str] = []
    for path in sorted(set(have) | set(want)):
        old, old_mode = have.get(path, (b"", 0))
        new, new_mode = want.get(path, (b"", 0))
        if path in have and path in want and old_mode != new_mode:
            out.append(f"mode of {path}: {old_mode:o} -> {new_mode:o}\n")
        if old != new or (path in have) != (path in want):
            out.extend(
                difflib.unified_diff(
                    old.decode("utf-8", "replace").splitlines(keepends=True),
                    new.decode("utf-8", "replace").splitlines(keepends=True),
                    fromfile=f"a/{path}" if path in have else "/dev/null",
                    tofile=f"b/{path}" if path in want else "/dev/null",
                )
            )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out)


# --- 2. units ------------------------------------------------------------------------------------


def _content(cfg: BuildConfig, files: list[OverlayFile]) -> Callable[[layout.Entry], bytes]:
    by_path = {f.path: f.content for f in files}

    def content(entry: layout.Entry) -> bytes:
        path = package_dir(cfg, entry.package) / "files" / str(entry.source)
        if path not in by_path:
            raise ValueError(f"{path} is not in the overlay plan")
        return by_path[path]

    return content


def unit_root(cfg: BuildConfig, files: list[OverlayFile], root: Path) -> list[str]:
    """Install the overlay's units under ``root`` by the install layout, as the ebuilds would (both
    packages, as on a machine with the sysext merged); return the units to verify."""
    host = next((d for d in HOST_UNIT_DIRS if d.is_dir()), None)
    if host is None:
        raise FileNotFoundError("no systemd unit directory on this machine (is systemd installed?)")
    units = root / "usr/lib/systemd/system"
    shutil.copytree(host, units, symlinks=True)
    for package in layout.Package:
        lay_out(cfg, package, root, _content(cfg, files))
    # Stand-ins for what the image provides: the agent's entry point and update-engine.service.
    (units / layout.UPDATE_ENGINE_UNIT).write_text(
        "[Unit]\nDescription=stand-in for update-engine\n\n[Service]\nType=dbus\nBusName=com.coreos.update1\n"
        "ExecStart=/usr/bin/piccolod\n"
    )
    binary = root / "usr/bin/piccolod"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    verified = (UNIT, layout.GUARD_UNIT, layout.START_UNIT, layout.UPDATE_ENGINE_UNIT, "multi-user.target")
    return [f"/usr/lib/systemd/system/{u}" for u in verified]


def verify_units(cfg: BuildConfig, files: list[OverlayFile], work: Path) -> Step:
    root = work / "units"
    try:
        names = unit_root(cfg, files, root)
    except (OSError, ValueError) as exc:
        return Step("systemd-analyze verify", False, str(exc))
    result = run(["systemd-analyze", "verify", f"--root={root}", *names], check=False)
    output = (result.stderr + result.stdout).strip()
    return Step("systemd-analyze verify", result.returncode == 0 and not result.stderr.strip(), output)


# --- 3. shell ------------------------------------------------------------------------------------


def ebuilds(files: list[OverlayFile]) -> list[OverlayFile]:
    return [f for f in files if f.path.suffix == ".ebuild"]


def bash_files(files: list[OverlayFile]) -> list[OverlayFile]:
    """What portage sources as bash: the ebuilds and the per-package bashrc files."""
    return [*ebuilds(files), *(f for f in files if f.path.is_relative_to(ENV_DIR))]


def lint_shell(files: list[OverlayFile], work: Path) -> list[Step]:
    out_bash: list[str] = []
    out_sc: list[str] = []
    paths = []
    for f in bash_files(files):
        path = work / "shell" / f.path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.content)
        paths.append(path)
        r = run(["bash", "-n", path], check=False)
        if r.returncode != 0 or r.stderr.strip():
            out_bash.append(f"{f.path}: {r.stderr.strip()}")
    sc = run(
        [
            tool("shellcheck"),
            "--shell=bash",
            "--format=gcc",
            f"--exclude={','.join(SHELLCHECK_EXCLUDES)}",
            *paths,
        ],
        check=False,
    )
    if sc.returncode != 0:
        out_sc.append((sc.stdout + sc.stderr).strip())
    scripts = []
    for f in files:
        if f.path.suffix == ".sh":  # the base image's POSIX sh scripts: no exclusions
            path = work / "shell" / "sh" / f.path.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f.content)
            scripts.append(path)
    if scripts:
        sc = run([tool("shellcheck"), "--shell=sh", "--format=gcc", *scripts], check=False)
        if sc.returncode != 0:
            out_sc.append((sc.stdout + sc.stderr).strip())
    return [
        Step("bash -n", not out_bash, "\n".join(out_bash)),
        Step("shellcheck", not out_sc, "\n".join(out_sc)),
    ]


# --- 4. pkgcheck ---------------------------------------------------------------------------------

IGNORED_REPO_WARNINGS = frozenset({"ArchesWithoutProfiles"})


def judge_pkgcheck(stdout: str, ours: list[str]) -> list[str]:
    """The results that fail the check, as 'where: Level Class: message' lines."""
    failures = []
    for line in stdout.splitlines():
        if not line.strip().startswith("{"):
            continue
        for keys, level, cls, msg in pkgcheck_results(json.loads(line)):
            if accepted(keys, cls):
                continue
            where = "/".join(keys) or "<repository>"
            is_ours = "/".join(keys[:2]) in ours
            repo_warning = level == "warning" and not keys and cls not in IGNORED_REPO_WARNINGS
            if level == "error" or (level in ("warning", "style") and is_ours) or repo_warning:
                failures.append(f"{where}: {level} {cls}: {msg}")
    return failures


def scan(cfg: BuildConfig, files: list[OverlayFile], work: Path) -> Step:
    repo = work / "repo"
    ours = build_scan_repo(cfg, files, repo)
    pkgcheck = tool("pkgcheck")
    result = run(
        [pkgcheck, "scan", "--exit", "error", "-R", "JsonReporter", "--cache-dir", work / "cache", repo],
        cwd=repo,
        env={"HOME": str(work)},
        check=False,
    )
    failures = judge_pkgcheck(result.stdout, ours)
    if result.returncode not in (0, 1):
        failures.append(f"pkgcheck exited with {result.returncode}: {result.stderr.strip()[-2000:]}")
    elif result.returncode == 1 and not failures:
        failures.append(f"pkgcheck reported errors: {result.stdout.strip()}")
    return Step("pkgcheck scan", not failures, "\n".join(failures))


def check_overlay(cfg: BuildConfig, files: list[OverlayFile], overlay: Path) -> Report:
    report = Report()
    diff = diff_tree(files, overlay)
    missing = "" if overlay.is_dir() else f"{overlay}: no such directory\n"
    report.steps.append(Step("diff", not diff and not missing, missing + diff))
    with tempfile.TemporaryDirectory(prefix="piccolo-check.") as tmp:
        work = Path(tmp)
        report.steps.append(verify_units(cfg, files, work))
        report.steps.extend(lint_shell(files, work))
        report.steps.append(scan(cfg, files, work))
    return report


__all__ = ["Report", "Step", "check_overlay", "diff_tree", "judge_pkgcheck"]
