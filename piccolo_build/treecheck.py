"""The in-tree check: our packages placed inside the real coreos-overlay of a flatcar/scripts checkout,
scanned by pkgcheck with portage-stable as master and Flatcar's board profiles (``piccolo-build check
--tree DIR``, and the build's ``tree-check`` step right after the overlay is copied in).

Why: every atom of every ebuild we render must resolve at the checked-out tag, with stable keywords,
under ``coreos/<arch>/generic``; a missing dependency, eclass, Manifest or a bad keyword found here
costs seconds, not hours inside the SDK.

How (nothing in the checkout is written):

- a throwaway copy of the checkout's ``coreos-overlay`` (about 10 MB) with our package directories (and
  licence files) put in, replacing any of the same name;
- a portage configuration directory of its own: ``repos.conf`` naming the checkout's
  ``portage-stable`` (used in place, read only) and the copy as ``coreos-overlay``, whose
  ``metadata/layout.conf`` already says ``masters = portage-stable``; ``make.profile`` pointing at the
  first board's profile;
- ``pkgcheck --config <that dir> scan -r <copy> -p coreos/<arch>/generic,... <our packages>``; every
  error-level result, and warnings about our packages, fail, one line each naming the package version.
  Info-level results (e.g. "PYTHON_COMPAT update available") do not.

Processes run only through :func:`piccolo_build.run.run`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piccolo_build.errors import PiccoloError
from piccolo_build.gentoo import COREOS_OVERLAY, OVERLAY, PORTAGE_STABLE, OverlayFile, package_key

# Levels that fail for our packages; errors fail wherever pkgcheck reports them for our packages.
FAILING_LEVELS = frozenset({"error", "warning"})
# The one result accepted for a package of ours: the base package's files/ holds the guard script, over
# pkgcheck's 20 KiB budget for files/ (a rule that keeps Gentoo's rsync tree small, which this overlay never
# joins). The script is rendered and checked byte for byte, shellcheck'd, and tested like every file.
ACCEPTED = frozenset({("coreos-base/piccolo-base", "SizeViolation")})


def accepted(keys: tuple[str, ...], cls: str) -> bool:
    """Whether pkgcheck's ``cls`` result for package ``keys`` is one we accept (:data:`ACCEPTED`)."""
    return ("/".join(keys[:2]), cls) in ACCEPTED


@dataclass(frozen=True)
class TreeCheck:
    findings: tuple[str, ...]  # one line per finding: "<category>/<package>-<version>: <Class>: <message>"
    packages: tuple[str, ...]  # what was scanned
    profiles: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


# One pkgcheck result: (category, package, version) as far as given, level, check class, message.
Result = tuple[tuple[str, ...], str, str, str]


def pkgcheck_results(data: Any, keys: tuple[str, ...] = ()) -> list[Result]:
    """One line of pkgcheck's JsonReporter output, flattened: it nests
    category/package/version/_level/Class: message (shared with piccolo_build.check)."""
    out: list[Result] = []
    for key, value in data.items():
        if key.startswith("_") and isinstance(value, dict):
            out.extend((keys, key[1:], cls, str(msg)) for cls, msg in value.items())
        elif isinstance(value, dict):
            out.extend(pkgcheck_results(value, (*keys, key)))
    return out


def findings(stdout: str, ours: Iterable[str]) -> list[str]:
    """The lines that fail the check, from pkgcheck's JSON output."""
    mine = set(ours)
    out: list[str] = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        for keys, level, cls, msg in pkgcheck_results(json.loads(line)):
            if "/".join(keys[:2]) in mine and level in FAILING_LEVELS and not accepted(keys, cls):
                where = f"{keys[0]}/{keys[1]}-{keys[2]}" if len(keys) > 2 else "/".join(keys)
                out.append(f"{where}: {cls}: {msg}")
    return sorted(dict.fromkeys(out))


def _place(files: Sequence[OverlayFile], overlay: Path) -> list[str]:
    """Put our package directories (each replaced whole) and licence files into ``overlay``."""
    packages = sorted({k for f in files if (k := package_key(f)) is not None})
    for key in packages:
        shutil.rmtree(overlay / key, ignore_errors=True)
    for f in files:
        rel = f.path.relative_to(OVERLAY) if f.path.parts[0] == OVERLAY.name else f.path
        target = overlay / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
        target.chmod(f.mode)
    return packages


def check_tree(
    scripts_dir: Path, files: Sequence[OverlayFile], arches: Sequence[str], cache_dir: Path
) -> TreeCheck:
    """Scan ``files`` (the rendered overlay) inside the checkout at ``scripts_dir``."""
    from piccolo_build.run import run, tool

    overlay, master = scripts_dir / COREOS_OVERLAY, scripts_dir / PORTAGE_STABLE
    for repo in (overlay, master):
        if not (repo / "profiles" / "repo_name").is_file():
            raise PiccoloError(f"{repo}: no profiles/repo_name: is {scripts_dir} a flatcar/scripts checkout?")
    profiles = tuple(f"coreos/{arch}/generic" for arch in arches)
    for profile in profiles:
        if not (overlay / "profiles" / profile).is_dir():
            raise PiccoloError(f"{overlay}/profiles/{profile}: no such board profile")
    with tempfile.TemporaryDirectory(prefix="piccolo-tree-check.") as tmp:
        work = Path(tmp)
        copy = work / "coreos-overlay"
        shutil.copytree(overlay, copy, symlinks=True)
        packages = _place(files, copy)
        config = work / "portage"
        config.mkdir()
        (config / "repos.conf").write_text(
            f"[DEFAULT]\nmain-repo = portage-stable\n\n[portage-stable]\nlocation = {master.resolve()}\n\n"
            f"[coreos-overlay]\nlocation = {copy}\n",
            encoding="utf-8",
        )
        (config / "make.profile").symlink_to(copy / "profiles" / profiles[0])
        cache_dir.mkdir(parents=True, exist_ok=True)
        argv: list[str | Path] = [tool("pkgcheck"), "--config", config, "scan", "-r", copy]
        argv += ["-R", "JsonReporter", "--exit", "error", "--cache-dir", cache_dir]
        argv += ["-p", ",".join(profiles), *packages]
        result = run(argv, cwd=work, env={"HOME": str(work)}, check=False)
    found = findings(result.stdout, packages)
    if result.returncode not in (0, 1):
        found.append(f"pkgcheck exited with {result.returncode}: {result.stderr.strip()[-2000:]}")
    elif result.returncode == 1 and not found:
        found.append(f"pkgcheck reported errors: {result.stdout.strip()[-2000:]}")
    return TreeCheck(tuple(found), tuple(packages), profiles)
