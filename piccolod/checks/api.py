"""The ``api`` check: piccolod's own HTTP API answers ``GET /livez`` with 200.

``/livez`` is the cheap liveness endpoint: the server answers it without running checks, so this check
never starts an assessment from inside an assessment. The address is ``agent.listen``; the whole
exchange (connect, request, status line) is bounded by the check's timeout, so a server that accepts
the connection and never answers fails the check on time.
"""

from __future__ import annotations

import http.client

from piccolod.checks.bounded import race
from piccolod.policy import PolicyFile, split_host_port
from piccolod.result import Outcome

PATH = "/livez"


def livez_url(listen: str) -> str:
    return f"http://{listen}{PATH}"


def _get_status(host: str, port: int, timeout: float) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", PATH, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read(4096)
        return response.status
    finally:
        conn.close()


def check_api(policy: PolicyFile, timeout: float) -> Outcome:
    listen = policy.agent.listen
    url = livez_url(listen)
    host, port = split_host_port(listen)
    result = race({"api": lambda: _get_status(host, port, timeout)}, timeout)["api"]
    if isinstance(result, BaseException):
        why = str(result) if not isinstance(result, ConnectionRefusedError) else "connection refused"
        return Outcome(False, f"GET {url} failed: {why}", {"url": url, "status_code": None})
    details = {"url": url, "status_code": result}
    if result != 200:
        return Outcome(False, f"GET {url} answered HTTP {result}", details)
    return Outcome(True, f"GET {url} answered HTTP 200", details)
