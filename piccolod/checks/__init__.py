"""The registry of health checks: one check function per component, and each component's deadline.

The assessment runs ``CHECKS[component](policy, timeout_for(component, policy))`` in a thread per
component. A check returns an :class:`~piccolod.result.Outcome` (verdict, human reason, the details the
API document shows); it may raise, and the caller turns exceptions and hangs into failures, but each
check also honours ``timeout`` itself (socket timeouts, client timeouts, probes bounded by
:func:`piccolod.checks.bounded.race`) so a dead dependency fails fast. Checks are thread-safe: they share
no state and open (and close) their own connections on every call. The only heavy library, ``tpm2_pytss``,
is imported by the TPM probe in its own process, never by the agent, so importing this registry is cheap.

Semantics of each check are in ``docs/agent.md`` ("Components and checks").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from piccolod.checks.api import check_api
from piccolod.checks.docker import check_containers, check_docker
from piccolod.checks.network import check_network
from piccolod.checks.storage import check_storage
from piccolod.checks.tpm import check_tpm
from piccolod.policy import Component, PolicyFile
from piccolod.result import Outcome


class Check(Protocol):
    def __call__(self, policy: PolicyFile, timeout: float) -> Outcome: ...


CHECKS: Mapping[Component, Check] = MappingProxyType(
    {
        Component.DOCKER: check_docker,
        Component.CONTAINERS: check_containers,
        Component.TPM: check_tpm,
        Component.STORAGE: check_storage,
        Component.NETWORK: check_network,
        Component.API: check_api,
    }
)


def timeout_for(component: Component, policy: PolicyFile) -> float:
    """The component's own deadline in seconds.

    The TPM has ``tpm_operation_timeout_seconds``; everything else talks over a socket or to the kernel
    and uses ``network_timeout_seconds`` (the policy has no separate Docker or storage deadline).
    """
    thresholds = policy.health_policy.thresholds
    if component is Component.TPM:
        return thresholds.tpm_operation_timeout_seconds
    return thresholds.network_timeout_seconds


__all__ = ["CHECKS", "Check", "timeout_for"]
