"""``piccolod check``: one assessment in this process, printed; the exit code is the verdict.

Exit codes follow the monitoring-plugin convention: 0 healthy, 1 degraded, 2 unhealthy, 3 could not
assess (a bad policy, say: this is also the policy's lint, which refuses what only this machine can
show, such as an ``exec`` check whose program is not executable). The ``api`` check probes the daemon at
the configured address, so without a running daemon it fails: that is the truth about the machine.
Declared checks that do not run are listed as ``disabled``, with why.
"""

from __future__ import annotations

import argparse
import json
import sys

from piccolod import document
from piccolod.assess import Assessment, Assessor
from piccolod.commands import EXIT_CANNOT_ASSESS, add_config_option, load
from piccolod.logs import verdict_word
from piccolod.policy import Declared
from piccolod.result import Status
from piccolod.text import printable

EXIT_CODES = {Status.HEALTHY: 0, Status.DEGRADED: 1, Status.UNHEALTHY: 2}


def render_text(assessment: Assessment, catalog: tuple[Declared, ...] = ()) -> str:
    disabled = [d for d in catalog if d.disabled is not None]
    width = max([10, *(len(r.component) for r in assessment.results), *(len(d.name) for d in disabled)])
    lines = [f"status: {assessment.status} ({assessment.duration_seconds:.3f}s)"]
    for r in assessment.results:
        verdict = verdict_word(r)
        weight = "required" if r.required else "optional"
        took = f"{r.duration_seconds:7.3f}s"
        lines.append(f"  {r.component:<{width}} {verdict:<7} {weight:<8} {took}  {printable(r.reason)}")
    for d in disabled:
        lines.append(f"  {d.name:<{width}} {'disabled':<7} {'':<8} {'':>8}  {printable(d.disabled or '')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    policy = load(args)
    if policy is None:
        return EXIT_CANNOT_ASSESS
    try:
        assessment = Assessor().assess(policy)
    except Exception as exc:  # "could not assess" is an answer too
        print(printable(f"piccolod: could not assess: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_CANNOT_ASSESS
    if args.json:
        facts = document.current_facts(policy.health_policy.checks.storage.mounts)
        doc = document.build(
            assessment,
            facts,
            startup_health_check="skipped",
            update_status="up_to_date",
            rollback_reason=None,
            checked=policy.health_policy.checked(),
            catalog=policy.health_policy.catalog(),
        )
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(render_text(assessment, policy.health_policy.catalog()))
    return EXIT_CODES[assessment.status]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="run one assessment and print it (exit 0/1/2/3)")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print the health document as JSON")
    p.set_defaults(func=run)
