"""``dns``: ``name`` resolves to at least one address through the system resolver (``getaddrinfo``, as
every other program on the machine resolves it), by the check's deadline: a silent resolver fails then.
"""

from __future__ import annotations

from functools import partial

from piccolod.checks.bounded import race
from piccolod.checks.network import reason, resolve
from piccolod.checkspec import DnsCheck
from piccolod.policy import PolicyFile
from piccolod.result import Outcome


def check_dns(name: str, spec: DnsCheck, policy: PolicyFile, timeout: float) -> Outcome:
    got = race({"dns": partial(resolve, spec.name)}, timeout)["dns"]
    if isinstance(got, BaseException):
        return Outcome(False, f"{spec.name}: {reason(got, timeout)}", {"name": spec.name, "addresses": []})
    if not isinstance(got, list) or not got:
        return Outcome(False, f"{spec.name}: no address", {"name": spec.name, "addresses": []})
    return Outcome(
        True, f"{spec.name} resolves to {', '.join(got[:4])}", {"name": spec.name, "addresses": got}
    )
