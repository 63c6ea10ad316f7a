"""constraints.txt: the pinned environment build.py installs, and that it cannot drift from pyproject.

Every requirement of every extra must be pinned, to a version its specifier allows; every package the
environment pulls in (transitively, read from the installed metadata) must be pinned and installed at
that version; the agent's runtime packages must be pinned to what the device gets (the shipped
piccolo.lock.json). The fix for each failure is `python3 build.py lock-env`.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import build
from piccolo_build.lock import SHIPPED_LOCK

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "piccolo-build"
FIX = "run `python3 build.py lock-env`"


def read_pins(text: str) -> tuple[dict[str, str], list[str]]:
    """The pins of a constraints file, and what is wrong with its format."""
    pins: dict[str, str] = {}
    problems = []
    names = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z0-9]+(?:-[a-z0-9]+)*)==(\S+)", line)
        if m is None:
            problems.append(f"line {n}: not 'name==version' with a normalised name: {line!r}")
            continue
        name, version = m.groups()
        Version(version)  # raises on a version that is not PEP 440
        if name in pins:
            problems.append(f"line {n}: {name} pinned twice")
        pins[name] = version
        names.append(name)
    if names != sorted(names):
        problems.append("pins are not sorted by name")
    return pins, problems


def requirements(pyproject: str) -> list[tuple[str, Requirement]]:
    """(where, requirement) for the dependencies and every extra, without the project's own extras."""
    project = tomllib.loads(pyproject)["project"]
    out = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out += [(f"extra {extra}", Requirement(r)) for r in reqs]
    return [(where, r) for where, r in out if canonicalize_name(r.name) != PROJECT]


def disagreements(pyproject: str, constraints: str) -> list[str]:
    """Where pyproject's requirements and the pins disagree (empty: they agree)."""
    pins, problems = read_pins(constraints)
    for where, req in requirements(pyproject):
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{where}: {req} has no pin")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{where}: {req} does not allow the pinned {pin}")
    return problems


def test_pyproject_and_the_pins_agree() -> None:
    problems = disagreements((ROOT / "pyproject.toml").read_text(), build.CONSTRAINTS.read_text())
    assert not problems, f"{'; '.join(problems)}: {FIX}"


@pytest.mark.parametrize(
    ("pyproject_line", "pin", "problem"),
    [
        ('"newthing>=1"', "", "dependencies: newthing>=1 has no pin"),
        ('"jinja2>=4"', "", "dependencies: jinja2>=4 does not allow the pinned 3.1.6"),
        ('"jinja2>=3"', "Jinja2==3.1.6\n", "not 'name==version' with a normalised name"),
        ('"jinja2>=3"', "jinja2==3.1.6\n", "jinja2 pinned twice"),
    ],
)
def test_the_agreement_check_can_fail(pyproject_line: str, pin: str, problem: str) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text().replace('"jinja2>=3.1",', pyproject_line + ",", 1)
    assert pyproject_line in pyproject
    problems = disagreements(pyproject, build.CONSTRAINTS.read_text() + pin)
    assert any(problem in p for p in problems), problems


def test_every_package_the_environment_pulls_in_is_pinned_and_installed_at_its_pin() -> None:
    """Walk the installed metadata from the project's requirements (all extras): the closure is what
    pip resolved, so a transitive dependency without a pin, or an install that ignored the pins, fails."""
    pins, problems = read_pins(build.CONSTRAINTS.read_text())
    assert not problems
    queue = [
        (r.name, r.extras, where)
        for where, r in requirements((ROOT / "pyproject.toml").read_text())
        if r.marker is None or r.marker.evaluate()
    ]
    seen: set[str] = set()
    drift = []
    while queue:
        dist, extras, wanted_by = queue.pop()
        name = canonicalize_name(dist)
        if name in seen:
            continue
        seen.add(name)
        installed = metadata.version(dist)
        if pins.get(name) != installed:
            drift.append(f"{name} {installed} (wanted by {wanted_by}) is pinned to {pins.get(name)}")
        for text in metadata.requires(dist) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras or {""}):
                queue.append((sub.name, sub.extras, name))
    assert not drift, f"{'; '.join(sorted(drift))}: {FIX}, then `python3 build.py test`"
    assert {"typer", "pyyaml", "pytest", "pkgcheck", "tpm2-pytss", "cryptography"} <= seen


def test_the_agents_runtime_packages_are_pinned_to_what_the_device_gets() -> None:
    pins, _ = read_pins(build.CONSTRAINTS.read_text())
    lock = json.loads(SHIPPED_LOCK.read_text())
    device = {canonicalize_name(p["pypi_name"]): p["version"] for p in lock["packages"] if p["runtime"]}
    assert device, "the lock pins the agent's runtime packages"
    wrong = {name: (pins.get(name), version) for name, version in device.items() if pins.get(name) != version}
    assert not wrong, f"pinned vs device lock: {wrong}: {FIX}"


def test_build_py_reinstalls_when_the_pins_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "constraints.txt"
    copy.write_text(build.CONSTRAINTS.read_text())
    monkeypatch.setattr(build, "CONSTRAINTS", copy)
    before = build.install_digest()
    copy.write_text(copy.read_text().replace("jinja2==", "jinja2==0+"))
    assert build.install_digest() != before


def test_the_pins_say_how_they_were_made() -> None:
    assert build.CONSTRAINTS.read_text().startswith(build.CONSTRAINTS_HEADER)
