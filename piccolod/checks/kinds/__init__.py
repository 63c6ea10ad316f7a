"""The kinds of check an operator declares (``health_policy.checks.NAME.kind``), one module each.

Each module has one runner, ``(name, spec, policy, timeout) -> Outcome``: ``name`` is the check's,
``spec`` its settings (:mod:`piccolod.checkspec`), ``timeout`` its deadline in seconds, which the runner
honours itself (child processes are killed, blocking calls are raced by
:func:`piccolod.checks.bounded.race`), so a dead dependency fails on time. Like the built-in checks they
share no state and are thread-safe. ``unknown`` (an :class:`~piccolod.result.Outcome` with that state)
is for a check that ran and could not tell: a unit still activating, a container still starting, an
``exec`` program's exit 2. ``refused`` is for one that cannot run here.

The registry (:data:`KINDS`) is what :func:`piccolod.checks.check_for` looks a custom check up in.
Semantics are in docs/agent.md ("Checks of your own").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from piccolod.checks.kinds.container import check_container
from piccolod.checks.kinds.dns import check_dns
from piccolod.checks.kinds.exec import check_exec
from piccolod.checks.kinds.http import check_http
from piccolod.checks.kinds.systemd_unit import check_systemd_unit
from piccolod.checks.kinds.tcp import check_tcp
from piccolod.checkspec import Kind
from piccolod.policy import PolicyFile
from piccolod.result import Outcome

Runner = Callable[[str, Any, PolicyFile, float], Outcome]

KINDS: Mapping[str, Runner] = MappingProxyType(
    {
        Kind.EXEC: check_exec,
        Kind.SYSTEMD_UNIT: check_systemd_unit,
        Kind.HTTP: check_http,
        Kind.TCP: check_tcp,
        Kind.CONTAINER: check_container,
        Kind.DNS: check_dns,
    }
)

__all__ = ["KINDS", "Runner"]
