"""The linters are part of the test suite, so CI catches style and type errors."""

from __future__ import annotations

import ast
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


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in {
            "import_module",
            "__import__",
        }:
            names.update(
                a.value.split(".")[0]
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
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


def test_only_run_module_spawns_processes() -> None:
    """STYLE.md: one choke point runs processes (run.py; docker_sdk.py talks to the Docker daemon)."""
    spawners = {"subprocess", "sh", "pty", "docker"}
    offenders = [
        f"{p.relative_to(ROOT)}: {sorted(_imports(p) & spawners)}"
        for p in sorted((ROOT / "piccolo_build").rglob("*.py"))
        if p.name not in {"run.py", "docker_sdk.py"} and _imports(p) & spawners
    ]
    assert offenders == []
