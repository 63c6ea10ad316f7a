"""``piccolod gate [--dry-run]``: run the first-boot gate alone (what ``piccolod serve`` does at start).

With ``--dry-run`` it prints the slot table and the decision it would take after one assessment, and
sends nothing to systemd, writes nothing and never reboots. Exit status: 0 when the gate opens (or
would), 3 when it fails (or would), or when it was stopped before a verdict. Without ``--dry-run`` it is
the gate of this boot, journaled like ``serve``'s: run again in the same boot it repeats the verdict.
"""

from __future__ import annotations

import argparse
import socket
import sys

from piccolod import logs, manager
from piccolod.api import listen_socket
from piccolod.commands import EXIT_CANNOT_ASSESS, add_config_option, load
from piccolod.daemon import Daemon
from piccolod.gate import Decision, GateResult
from piccolod.gatehook import detect_slot, first_boot_gate
from piccolod.result import CheckState
from piccolod.slot import SlotState, format_table

EXIT_GATE_FAILED = 3


def describe(result: GateResult) -> str:
    v = result.verdict
    if v.decision is Decision.READY:
        when = "at once" if result.slot.state is SlotState.MARKED else "now"
        action = f"write the pass token and send READY=1 {when} (update_engine may mark the slot)"
    else:
        after = "then reboot into the previous slot" if v.reboot else "and not reboot"
        action = f"fail the gate ({v.condition}), write the rollback record, no pass token, {after}"
    lines = [f"decision: {v.decision}: {v.reason}", f"would: {action}"]
    if result.assessment is not None:
        for r in result.assessment.results:
            verdict = (
                "ok  " if r.healthy else ("FAIL" if r.state is CheckState.FAILED else str(r.state).upper())
            )
            kind = "required" if r.required else "optional"
            lines.append(f"  {verdict} {r.component:10} {kind:8} {r.duration_seconds:7.3f}s  {r.reason}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logs.setup(sys.stderr)
    policy = load(args)
    if policy is None:
        return EXIT_CANNOT_ASSESS
    # The api check needs an answer: serve the API here unless a running agent holds the address
    # (then that agent answers the check).
    try:
        listener: socket.socket | None = listen_socket(policy.agent.listen)
    except OSError as exc:
        listener = None
        print(
            f"piccolod: API not started here ({exc}); the api check asks the running agent", file=sys.stderr
        )
    daemon = Daemon(policy, env={} if args.dry_run else None, listener=listener, bind=False)
    daemon.start_api()
    try:
        if args.dry_run:
            print(format_table(detect_slot(policy)))
        # This process ends right after the verdict: wait for the request to start update-engine, which
        # ``serve`` leaves to a thread of the long-running agent.
        outcome = first_boot_gate(
            daemon, dry_run=args.dry_run, start_update_engine=_start_update_engine_and_wait
        )
    finally:
        if daemon.server is not None:
            daemon.server.stop()
    if outcome.message:
        print(f"piccolod: {outcome.message}", file=sys.stderr)
    if outcome.result is None:
        return EXIT_GATE_FAILED
    if args.dry_run:
        print(describe(outcome.result))
    return 0 if outcome.passed else EXIT_GATE_FAILED


def _start_update_engine_and_wait() -> None:
    manager.start_update_engine().join(manager.SYSTEMCTL_TIMEOUT)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gate", help="run the first-boot gate once (READY=1 or rollback)")
    add_config_option(p)
    p.add_argument(
        "--dry-run", action="store_true", help="print the slot table and the decision; act on nothing"
    )
    p.set_defaults(func=run)
