"""A built wheel, installed alone in a fresh virtual environment, renders, plans and checks.

From a copy of the checkout as git would clone it (tracked and not ignored files: no .venv, no build
leftovers), ``pip wheel`` builds the wheel; a fresh venv gets that wheel and its dependencies at the
pinned versions, offline, from the wheels ``build.py test`` keeps in ``$PICCOLO_TEST_CACHE/wheels``.
Then, in an empty working directory (no piccolo.yaml, no piccolo.lock.json): the default overlay
renders byte for byte and mode for mode as the committed ``overlays/``, the plan computes, ``check``
passes on copies of ``overlays/`` and ``monitoring/`` (pkgcheck and shellcheck found beside the venv's
interpreter, the venv not activated),
``piccolod --help`` works without the agent extra, and a project's own piccolo.lock.json wins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolo_build.gentoo import gentoo_version
from piccolo_build.render import read_tree
from tests.builder_helpers import ROOT

pytestmark = pytest.mark.slow

WHEELS = Path(os.environ.get("PICCOLO_TEST_CACHE") or ROOT / ".venv" / "test-cache") / "wheels"


def sh(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def clone_like_git(dest: Path) -> None:
    """The files a fresh clone of this checkout would have, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet committed
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not any(WHEELS.glob("typer-*.whl")):
        pytest.fail(f"no wheels in {WHEELS}: fill the cache with `python3 build.py test`")
    base = tmp_path_factory.mktemp("wheel")
    clone = base / "clone"
    clone_like_git(clone)
    assert not (clone / ".venv").exists() and (clone / "pyproject.toml").is_file()
    sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        base / "dist",
        ".",
        cwd=clone,
    )
    (wheel,) = (base / "dist").glob("piccolo_build-*.whl")
    env = base / "venv"
    sh(sys.executable, "-m", "venv", env, cwd=base)
    sh(
        env / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        WHEELS,
        "--constraint",
        clone / "constraints.txt",
        f"{wheel}[check]",
        cwd=base,
    )
    yield env


@pytest.fixture(scope="module")
def system_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The system's programs without the linters piccolo-build check must find in its own venv (as on
    a machine where shellcheck was never installed with apt)."""
    bin_dir = tmp_path_factory.mktemp("system-bin")
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for program in Path(directory).iterdir():
            link = bin_dir / program.name
            if program.name not in LINTERS and not link.exists() and not link.is_symlink():
                link.symlink_to(program)
    return str(bin_dir)


LINTERS = ("shellcheck", "pkgcheck")


def run_in(env: Path, cwd: Path, path: str, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a console script of the venv without activating it: PATH has only the system's tools."""
    program = env / "bin" / str(argv[0])
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PICCOLO_", "PYTHON", "VIRTUAL_ENV"))}
    return sh(program, *argv[1:], cwd=cwd, env={**clean, "PATH": path})


def test_the_wheel_holds_only_the_two_packages_and_their_data(venv: Path) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "piccolo_build" / "templates" / "agent" / "piccolod.service.j2").is_file()
    assert (site / "piccolo_build" / "data" / "piccolo.lock.json").is_file()
    assert (site / "piccolod" / "py.typed").is_file()
    assert not (site / "templates").exists() and not (site / "tests").exists()
    # Nothing of the checkout is reachable: the installed package is what runs.
    r = sh(venv / "bin" / "python", "-c", "import piccolo_build; print(piccolo_build.__file__)", cwd=venv)
    assert r.stdout.startswith(str(site))


def test_renders_the_committed_overlay_byte_for_byte(venv: Path, tmp_path: Path, system_path: str) -> None:
    r = run_in(venv, tmp_path, system_path, "piccolo-build", "render", "-o", tmp_path / "out", "--json")
    assert json.loads(r.stdout)["changed"] is True
    assert read_tree(tmp_path / "out") == read_tree(ROOT / "overlays")


def test_plans(venv: Path, tmp_path: Path, system_path: str) -> None:
    r = run_in(venv, tmp_path, system_path, "piccolo-build", "plan", "--json")
    steps = [s["name"] for s in json.loads(r.stdout)["steps"]]
    assert "distfiles" in steps and len(steps) > 5


def test_checks_with_the_tools_of_its_own_environment(venv: Path, tmp_path: Path, system_path: str) -> None:
    assert not any((Path(system_path) / name).exists() for name in LINTERS)
    shutil.copytree(ROOT / "overlays", tmp_path / "overlays", symlinks=True)
    shutil.copytree(ROOT / "monitoring", tmp_path / "monitoring", symlinks=True)
    r = run_in(venv, tmp_path, system_path, "piccolo-build", "check", "--json")
    report = json.loads(r.stdout)
    assert report["ok"] is True, r.stdout
    assert {s["name"] for s in report["steps"]} >= {
        "diff",
        "shellcheck",
        "pkgcheck scan",
        "monitoring diff",  # the dashboard built with the SDK installed from the wheels
        "promtool check rules",
    }


def test_piccolod_help_without_the_agent_extra(venv: Path, tmp_path: Path, system_path: str) -> None:
    r = run_in(venv, tmp_path, system_path, "piccolod", "--help")
    assert r.stdout.startswith("usage: piccolod ")
    for command in ("serve", "check", "gate", "status"):
        assert command in r.stdout


def test_a_projects_own_lock_wins_and_lock_writes_there(venv: Path, tmp_path: Path, system_path: str) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    lock = json.loads((site / "piccolo_build" / "data" / "piccolo.lock.json").read_text())
    pkg = lock["packages"][0]
    pkg["summary"] = "Our own pin"
    (tmp_path / "piccolo.lock.json").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    run_in(venv, tmp_path, system_path, "piccolo-build", "render", "-o", tmp_path / "out")
    ours = read_tree(tmp_path / "out")
    committed = read_tree(ROOT / "overlays")
    changed = sorted(str(path) for path in ours if ours[path] != committed.get(path))
    ebuild = f"{pkg['name']}-{gentoo_version(pkg['version'])}.ebuild"
    assert changed == [f"coreos-overlay/dev-python/{pkg['name']}/{ebuild}"]  # its DESCRIPTION
    code = (
        "from piccolo_build import lock; "
        "print(lock.lock_path(), lock.write_path(), lock.source_checkout(), sep='\\n')"
    )
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    r = sh(venv / "bin" / "python", "-c", code, cwd=here)
    shipped = str(site / "piccolo_build" / "data" / "piccolo.lock.json")
    # No project lock: read the shipped one, but a refresh starts the project's own (never site-packages).
    assert r.stdout.splitlines() == [shipped, "piccolo.lock.json", "None"]
    there.mkdir()
    (there / "piccolo.lock.json").write_text("{}\n")
    r = sh(venv / "bin" / "python", "-c", code, cwd=there)
    assert r.stdout.splitlines() == ["piccolo.lock.json", "piccolo.lock.json", "None"]
