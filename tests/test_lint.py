"""The linters are part of the test suite, so CI catches style and type errors."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_lint() -> None:
    r = _run(str(BIN / "ruff"), "check", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    r = _run(str(BIN / "ruff"), "format", "--check", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = _run(str(BIN / "mypy"))
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path, *, full: bool = False) -> set[str]:
    """Top-level packages ``path`` imports anywhere (``full``: the dotted module names)."""

    def name(module: str) -> str:
        return module if full else module.partition(".")[0]

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(name(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(name(node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in {
            "import_module",
            "__import__",
        }:
            names.update(
                name(a.value) for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
            )
    return names


def test_agent_never_imports_builder() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "piccolod").rglob("*.py") if "piccolo_build" in _imports(p)
    ]
    assert offenders == []


def test_import_scan_sees_a_builder_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom piccolo_build.config import BuildConfig\n", encoding="utf-8")
    assert "piccolo_build" in _imports(bad)


# Dropped from the agent for memory: the Engine API and /metrics use the standard library and our code.
AGENT_FORBIDDEN = {"docker", "prometheus_client", "requests", "urllib3"}
# Heavy standard-library modules the agent has no use for (http.client alone loads ssl and email).
AGENT_FORBIDDEN_STDLIB = {"asyncio", "ssl", "email", "http.client", "http.server", "urllib.request", "xml"}


def forbidden_in_agent(names: set[str]) -> set[str]:
    """The modules among ``names`` (dotted) the agent must not import."""
    banned = AGENT_FORBIDDEN | AGENT_FORBIDDEN_STDLIB
    return {n for n in names for b in banned if n == b or n.startswith(b + ".")}


def test_agent_imports_neither_the_docker_sdk_nor_a_metrics_library() -> None:
    """Anywhere in piccolod/, at the top of a module or inside a function."""
    offenders = {
        str(p.relative_to(ROOT)): sorted(forbidden_in_agent(_imports(p, full=True)))
        for p in sorted((ROOT / "piccolod").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_agent_import_scan_sees_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f() -> None:\n    import docker.errors\n    from http.client import HTTPConnection\n")
    assert forbidden_in_agent(_imports(bad, full=True)) == {"docker.errors", "http.client"}


def test_only_run_module_spawns_processes() -> None:
    """One choke point runs processes (run.py; docker_sdk.py talks to the Docker daemon)."""
    spawners = {"subprocess", "sh", "pty", "docker"}
    offenders = [
        f"{p.relative_to(ROOT)}: {sorted(_imports(p) & spawners)}"
        for p in sorted((ROOT / "piccolo_build").rglob("*.py"))
        if p.name not in {"run.py", "docker_sdk.py"} and _imports(p) & spawners
    ]
    assert offenders == []


def test_only_the_agents_run_module_spawns_processes() -> None:
    """The agent's one process helper (piccolod/run.py): the TPM probe, the reboot command, systemctl."""
    spawners = {"subprocess", "sh", "pty", "multiprocessing"}
    offenders = [
        f"{p.relative_to(ROOT)}: {sorted(_imports(p) & spawners)}"
        for p in sorted((ROOT / "piccolod").rglob("*.py"))
        if p.name != "run.py" and _imports(p) & spawners
    ]
    assert offenders == []
    calls = [
        f"{p.relative_to(ROOT)}: os.{node.func.attr}"
        for p in sorted((ROOT / "piccolod").rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "os"
        and (
            node.func.attr.startswith(("exec", "spawn", "posix_spawn"))
            or node.func.attr in {"fork", "system", "popen"}
        )
    ]
    assert calls == []


# Notes kept outside the repository by whoever wrote the first design; the project must stand alone.
_OUTSIDE_NOTES = re.compile(r"\b(?:FLATCAR|AGENT|TESTING|STYLE|ARCHITECTURE)\.md\b|\.\./shared/(?!flatcar/)")


def _tracked_text_files() -> list[Path]:
    out = _run("git", "ls-files", "-z").stdout.split("\0")
    return [ROOT / f for f in out if f and (ROOT / f).is_file()]


def outside_references(paths: list[Path]) -> list[str]:
    """``file:line`` of every mention of a design note that does not live in this repository."""
    found = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found += [
            f"{path.relative_to(ROOT)}:{n}"
            for n, line in enumerate(text.splitlines(), 1)
            if _OUTSIDE_NOTES.search(line)
        ]
    return found


def test_project_stands_alone() -> None:
    assert outside_references(_tracked_text_files()) == []


def test_outside_reference_scan_sees_one(tmp_path: Path) -> None:
    bad = ROOT / "tests" / f".scan-{tmp_path.name}.txt"
    bad.write_text("see " + "FLATCAR" + ".md section 4\n", encoding="utf-8")
    try:
        assert outside_references([bad]) == [f"tests/{bad.name}:1"]
    finally:
        bad.unlink()


_DOC_REFERENCE = re.compile(r"\bdocs/([A-Za-z0-9_-]+\.md)\b")


def test_every_cited_document_exists() -> None:
    """Code, comments and generated files point readers at docs/; every page they name must be there."""
    missing = sorted(
        f"{path.relative_to(ROOT)}:{n}: docs/{name}"
        for path in _tracked_text_files()
        for n, line in enumerate(_lines(path), 1)
        for name in _DOC_REFERENCE.findall(line)
        if not (ROOT / "docs" / name).is_file()
    )
    assert missing == []


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError):
        return []
