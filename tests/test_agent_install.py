"""The agent in any install: the standard library alone must give ``--help``; a missing dependency is
one line and a documented exit code; serving loads no heavy module (the static scan of what piccolod/
imports is in test_lint.py).

A "bare install" here is the real interpreter started with ``-S`` (no site-packages at all: no PyYAML,
no tpm2-pytss) and the checkout on ``PYTHONPATH``: exactly what a machine without the agent's
dependencies has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_lint import forbidden_in_agent

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "piccolod"


def bare(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-S", *argv], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_the_bare_interpreter_really_lacks_the_dependencies() -> None:
    r = bare("-c", "import yaml")
    assert r.returncode == 1 and "No module named 'yaml'" in r.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["check"], ["gate"], ["status"]])
def test_help_works_without_any_dependency(command: list[str]) -> None:
    r = bare("-m", "piccolod", *command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: piccolod") and r.stderr == ""


@pytest.mark.parametrize(("command", "code"), [("check", 3), ("serve", 1), ("status", 3), ("gate", 3)])
def test_a_missing_dependency_is_one_line_and_the_commands_code(
    tmp_path: Path, command: str, code: int
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("health_policy: {}\nagent: {state_dir: " + str(tmp_path / "state") + "}\n")
    args = [command, "--config", str(policy)] + (["--dry-run"] if command == "gate" else [])
    r = bare("-m", "piccolod", *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr == "piccolod: PyYAML is not installed (no Python module 'yaml'): pip install PyYAML\n"
    assert r.stdout == ""
    assert not (tmp_path / "state").exists()


def test_the_tpm_probe_says_tpm2_pytss_is_missing() -> None:
    r = bare(str(AGENT / "checks" / "tpm_probe.py"), "device:/dev/tpmrm0", "2")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {
        "error": "the Python module 'tpm2_pytss' is not installed (pip install tpm2-pytss)"
    }


def test_serving_loads_no_heavy_module() -> None:
    """What ``piccolod serve`` imports to run (the daemon, every check, the gate), in a fresh process."""
    code = (
        "import sys, piccolod.commands.serve, piccolod.checks, piccolod.daemon, piccolod.gatehook;"
        "print(' '.join(sorted(sys.modules)))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert forbidden_in_agent(set(r.stdout.split())) == set()
