"""``piccolod serve``: run the agent (the systemd service's ExecStart)."""

from __future__ import annotations

import argparse

from piccolod import logs
from piccolod.commands import EXIT_CANNOT_ASSESS, add_config_option, load
from piccolod.daemon import Daemon, GateHook
from piccolod.gatehook import EXIT_GATE_FAILED, GateClosed, serve_hook
from piccolod.policy import PolicyFile


def choose_gate(policy: PolicyFile) -> GateHook:
    """The hook that decides when READY=1 is sent: the first-boot gate (piccolod.gatehook)."""
    return serve_hook


def run(args: argparse.Namespace) -> int:
    logs.setup()
    policy = load(args)
    if policy is None:
        return EXIT_CANNOT_ASSESS
    try:
        daemon = Daemon(policy, gate=choose_gate(policy))
    except OSError as exc:
        print(f"piccolod: cannot start: {exc}", flush=True)
        return EXIT_CANNOT_ASSESS
    try:
        return daemon.run()
    except GateClosed as exc:  # no READY=1 was sent; the unit must not restart into a second gate
        print(f"piccolod: {exc}", flush=True)
        return EXIT_GATE_FAILED


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the health agent: API, gate, runtime checks")
    add_config_option(p)
    p.set_defaults(func=run)
