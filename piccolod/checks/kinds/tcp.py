"""``tcp``: a TCP connection to ``address`` (``host:port`` or ``[v6]:port``) is accepted; nothing is sent.

The same probe as the built-in ``network`` check's targets, for one address, by the check's deadline
(name resolution included): refused and unreachable fail at once, a black hole at the deadline.
"""

from __future__ import annotations

import time
from functools import partial

from piccolod.checks.bounded import race
from piccolod.checks.network import connect, reason
from piccolod.checkspec import TcpCheck
from piccolod.policy import PolicyFile
from piccolod.result import Outcome


def check_tcp(name: str, spec: TcpCheck, policy: PolicyFile, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    got = race({"tcp": partial(connect, spec.address, deadline)}, timeout)["tcp"]
    details = {"address": spec.address}
    if isinstance(got, BaseException):
        return Outcome(False, f"{spec.address}: {reason(got, timeout)}", details)
    return Outcome(True, f"{spec.address} accepts connections", details)
