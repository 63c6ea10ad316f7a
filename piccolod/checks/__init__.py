"""The registry of health checks: every check's function (:func:`check_for`) and its deadline.

The six built-in checks are :data:`CHECKS`, one function per component; a check of the operator's own
is its kind's runner (:mod:`piccolod.checks.kinds`) bound to its name and settings. The assessment runs
``check_for(name, policy)(policy, timeout_for(name, policy))`` in a thread per check. A check returns
an :class:`~piccolod.result.Outcome` (verdict, human reason, the details the API document shows); it
may raise, and the caller turns exceptions and hangs into failures, but each
check also honours ``timeout`` itself (socket timeouts, client timeouts, probes bounded by
:func:`piccolod.checks.bounded.race`) so a dead dependency fails fast. Checks are thread-safe: they share
no state and open (and close) their own connections on every call. The only heavy library, ``tpm2_pytss``,
is imported by the TPM probe in its own process, never by the agent, so importing this registry is cheap.

Semantics of each check are in ``docs/agent.md`` ("Components and checks").
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from types import MappingProxyType
from typing import Protocol

from piccolod.checks.api import check_api
from piccolod.checks.docker import check_containers, check_docker
from piccolod.checks.kinds import KINDS
from piccolod.checks.network import check_network
from piccolod.checks.storage import check_storage
from piccolod.checks.tpm import check_tpm
from piccolod.policy import Component, PolicyFile
from piccolod.result import Outcome


class Check(Protocol):
    def __call__(self, policy: PolicyFile, timeout: float) -> Outcome: ...


CHECKS: Mapping[str, Check] = MappingProxyType(
    {
        Component.DOCKER: check_docker,
        Component.CONTAINERS: check_containers,
        Component.TPM: check_tpm,
        Component.STORAGE: check_storage,
        Component.NETWORK: check_network,
        Component.API: check_api,
    }
)


def check_for(name: str, policy: PolicyFile) -> Check | None:
    """The function that runs check ``name`` of ``policy`` (None: the policy declares no such check)."""
    builtin = CHECKS.get(name)
    if builtin is not None:
        return builtin
    spec = policy.health_policy.checks.custom.get(name)
    if spec is None:
        return None
    run: Check = partial(KINDS[spec.kind], name, spec)
    return run


def timeout_for(component: str, policy: PolicyFile) -> float:
    """The check's own deadline in seconds: its ``timeout_seconds``, else the policy-wide one.

    The TPM has ``tpm_operation_timeout_seconds``; everything else talks over a socket, to the kernel or
    to a program and uses ``network_timeout_seconds`` (the policy has no separate Docker or storage
    deadline).
    """
    return policy.health_policy.options(component).timeout_seconds


__all__ = ["CHECKS", "Check", "check_for", "timeout_for"]
