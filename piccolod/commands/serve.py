"""``piccolod serve``: run the agent (the systemd service's ExecStart).

Exit status: 0 when stopped (SIGTERM), 1 when it cannot start, which ``Restart=on-failure`` retries. A
failed gate is not an exit: the agent records it, reboots once when the verdict asks for it, sends
``READY=1`` with a ``STATUS=`` saying why and stays up serving the failure, so nothing restarts it into a
second gate (the journal would refuse one anyway; docs/boot.md). A bad default policy does not even
stop it: a typo in the administrator's
``/etc/piccolod/health-policy.yaml`` must not block update-engine on a marked slot, so the agent logs the
error loudly, falls back to the vendor policy alone (then to the built-in defaults) and reports the error
as ``policy_error`` in the health document. Only an explicit ``--config`` that fails is fatal (exit 1).
A check whose program cannot run here (not executable, missing) does not make the policy bad for
``serve``: the check runs as ``refused``, which the API, the metrics and the logs show (``piccolod
check`` refuses such a policy outright).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from piccolod import logs
from piccolod.commands import add_config_option, load
from piccolod.daemon import Daemon, GateHook
from piccolod.gatehook import refresh_machine, serve_hook
from piccolod.model import MissingFile
from piccolod.policy import ADMIN_POLICY, VENDOR_POLICY, ModelError, PolicyFile, load_policy

log = logging.getLogger("piccolod")

EXIT_CANNOT_START = 1  # Restart=on-failure tries again


def choose_gate(policy: PolicyFile) -> GateHook:
    """The hook that decides when READY=1 is sent: the first-boot gate (piccolod.gatehook)."""
    return serve_hook


def load_default_policy(
    *, vendor: Path = VENDOR_POLICY, admin: Path = ADMIN_POLICY
) -> tuple[PolicyFile, str | None]:
    """The vendor policy overridden by the admin's; when that fails, the vendor policy alone, then the
    built-in defaults. Returns the policy and the error that forced a fallback (None: no fallback).

    Whatever the files hold, this returns: the loader turns every bad input into a one-line
    ModelError, and anything else (a bug) is caught too, because a policy that cannot be read must
    never keep update-engine from a good slot."""
    try:
        return load_policy(vendor=vendor, admin=admin, lint=False), None
    except ModelError as exc:
        error = str(exc)
    except Exception as exc:
        log.exception("cannot load the policy")
        error = f"cannot load the policy: {type(exc).__name__}"
    log.critical("bad policy: %s; falling back to the vendor policy %s alone", error, vendor)
    try:
        return load_policy(vendor, lint=False), error
    except MissingFile:
        return PolicyFile(), error
    except ModelError as exc:
        log.critical("bad vendor policy too: %s; falling back to the built-in defaults", exc)
        return PolicyFile(), f"{error}; {exc}"
    except Exception as exc:
        log.exception("cannot load the vendor policy")
        return PolicyFile(), f"{error}; cannot load the vendor policy: {type(exc).__name__}"


def run(args: argparse.Namespace) -> int:
    logs.setup()
    policy_error: str | None = None
    if args.config is not None:
        policy = load(args, lint=False)
        if policy is None:
            return EXIT_CANNOT_START
    else:
        policy, policy_error = load_default_policy()
    try:
        daemon = Daemon(policy, gate=choose_gate(policy), policy_error=policy_error, refresh=refresh_machine)
    except OSError as exc:
        print(f"piccolod: cannot start: {exc}", flush=True)
        return EXIT_CANNOT_START
    return daemon.run()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the health agent: API, gate, runtime checks")
    add_config_option(p)
    p.set_defaults(func=run)
