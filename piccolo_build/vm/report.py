"""The results as JUnit XML (for CI's test reports) and TAP; a stand-in's scenario is named
``model/scenario``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from xml.etree import ElementTree as ET

from piccolo_build.atomic import atomic_write
from piccolo_build.vm.runner import Outcome


def junit(outcomes: list[Outcome], path: Path, *, suite: str = "piccolo-vm-test") -> Path:
    root = ET.Element(
        "testsuite", name=suite, tests=str(len(outcomes)), failures=str(sum(not o.ok for o in outcomes)),
        time=f"{sum(o.seconds for o in outcomes):.1f}",
    )  # fmt: skip
    for o in outcomes:
        classname = f"{suite}.{o.model}" if o.model else suite
        case = ET.SubElement(root, "testcase", classname=classname, name=o.label, time=f"{o.seconds:.1f}")
        if not o.ok:
            fail = ET.SubElement(case, "failure", message=o.message[:500])
            fail.text = o.message + (f"\nlogs: {o.logs}" if o.logs else "")
        if o.notes:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(f"{k}: {v}" for k, v in o.notes.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
    return path


def tap(outcomes: list[Outcome]) -> str:
    lines = ["TAP version 13", f"1..{len(outcomes)}"]
    for i, o in enumerate(outcomes, start=1):
        lines.append(f"{'ok' if o.ok else 'not ok'} {i} - {o.label} # {o.seconds:.0f}s")
        if not o.ok:
            lines += [f"  # {m}" for m in o.message.splitlines()]
    return "\n".join(lines) + "\n"


def json_file(outcomes: list[Outcome], path: Path) -> Path:
    """Every outcome with its notes, boots and times, for a program to read (the test suite does)."""
    rows = [dataclasses.asdict(o) | {"logs": str(o.logs) if o.logs else None} for o in outcomes]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(rows, indent=1) + "\n").encode())
    return path
