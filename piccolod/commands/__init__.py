"""The ``piccolod`` subcommands, one module each; every module has ``add_parser(subparsers)``.

A module's ``add_parser`` adds its subparser and sets ``func`` (``args -> exit code``) as a default.
New commands (``gate``, ``status``) are added by listing their module in :data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from piccolod.policy import ModelError, PolicyFile, load_policy
from piccolod.text import printable

EXIT_CANNOT_ASSESS = 3  # also a bad policy (the monitoring-plugin "unknown")


def command_modules() -> tuple[ModuleType, ...]:
    from piccolod.commands import check, gate, serve, status, unpin

    return (serve, check, gate, status, unpin)


def add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="use this policy file and the drop-in directories beside it (checks.d/, required.d/, "
        "wanted.d/) instead of the vendor layer /usr/lib/piccolod/health-policy.yaml overridden by "
        "the administrator's /etc/piccolod/health-policy.yaml",
    )


def load(args: argparse.Namespace, *, lint: bool = True) -> PolicyFile | None:
    """The policy the command line asks for; prints the one-line error and returns None if it is bad.
    ``lint=False`` (``serve``) accepts a check whose program cannot run here: it runs as refused."""
    try:
        return load_policy(args.config, lint=lint)
    except ModelError as exc:
        print(printable(f"piccolod: {exc}"), file=sys.stderr)
        return None
