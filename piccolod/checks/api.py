"""The ``api`` check: piccolod's own HTTP API is alive and answers ``GET /livez`` with 200.

``/livez`` is the cheap liveness endpoint: the server answers it without running checks, so this check
never starts an assessment from inside an assessment. The whole exchange is bounded by the check's
timeout, so a server that accepts and never answers fails the check on time.

**Inside the agent** (``piccolod serve``, and ``piccolod gate`` when it serves the API itself) the check
goes through the server's private probe channel (:meth:`piccolod.api.ApiServer.probe`): a socket pair
that only the agent holds, handed to the API loop, which serves probes first in every turn. Passing proves
that

- the API's loop thread is alive and turning (it picked the probe up within the deadline),
- a real request goes through the same parser, routes and send path as every client's, and
- the public socket at ``agent.listen`` is still open and listening.

It does not try to connect to ``agent.listen`` like a client: any local process can hold connections,
pipeline requests or refuse to read, and the server is built to keep answering everyone anyway
(:mod:`piccolod.api`), but a check that raced those clients for a connection slot would let any of them
fail the first-boot gate and roll back a healthy update. Whether outside clients are served fairly is the
server's design and ``bench/agent.py``'s measurement, not a gate condition. When the agent could not bind
its address at all, the check fails with that reason (and never asks whoever holds the address).

**Outside the agent** (``piccolod check``, or ``piccolod gate`` beside a running agent) there is no
private channel: the check asks ``GET /livez`` at ``agent.listen`` over TCP, as any client would.
``details.channel`` says which way it went.
"""

from __future__ import annotations

import time
from typing import Any

from piccolod import api, http_client
from piccolod.policy import PolicyFile, split_host_port
from piccolod.result import Outcome

PATH = "/livez"


def livez_url(listen: str) -> str:
    return f"http://{listen}{PATH}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def _verdict(url: str, answer: http_client.Answer, took: float, details: dict[str, Any], how: str) -> Outcome:
    details["status_code"] = answer.status
    if answer.status != 200:
        return Outcome(False, f"GET {url} answered HTTP {answer.status} {how}", details)
    return Outcome(True, f"GET {url} answered HTTP 200 in {took * 1000:.1f} ms {how}", details)


def check_api(policy: PolicyFile, timeout: float) -> Outcome:
    listen = policy.agent.listen
    url = livez_url(listen)
    mine = api.published(listen)
    details: dict[str, Any] = {"url": url, "status_code": None, "channel": "private" if mine else "tcp"}
    if isinstance(mine, str):
        return Outcome(False, f"the agent has no HTTP API: {mine}", details)
    started = time.monotonic()
    try:
        if mine is not None:
            if not mine.listening:
                return Outcome(False, f"the API socket at {listen} is not listening", details)
            answer = mine.probe(PATH, timeout)
        else:
            host, port = split_host_port(listen)
            answer = http_client.get(http_client.Endpoint(url, host=host, port=port), PATH, timeout)
    except (OSError, ValueError, http_client.HttpError) as exc:
        return Outcome(False, f"GET {url} failed: {_why(exc)}", details)
    how = "over the agent's private probe channel" if mine is not None else "over TCP"
    return _verdict(url, answer, time.monotonic() - started, details, how)
