"""The ``docker`` and ``containers`` checks: the Docker Engine API over its socket, with the standard library.

``docker``: the engine answers ``GET /version`` (an answer is as good as a ping, and it carries what the
details show); details carry its version, API version and the endpoint used.

``containers``: among running containers, any whose ``HEALTHCHECK`` says ``unhealthy``, or that is still
``starting`` more than ``thresholds.container_startup_seconds`` after it started, fails the check.
``starting`` lists containers still inside that grace period; ``starting_too_long`` those past it (the
two lists never overlap). Containers without a health check count as running and nothing more. The
requests (Engine API, unversioned paths, served at the engine's own API version):

- ``GET /containers/json``: the running containers (their number and names);
- ``GET /containers/json?filters={"health":["unhealthy"]}`` and ``...["starting"]``: the engine applies
  the health filter itself, so only the containers that matter come back;
- ``GET /containers/{id}/json`` for each ``starting`` one: its ``State.StartedAt`` (the list only has the
  creation time, which a restarted container's grace period must not count from).

The endpoint is ``checks.docker.host``; when that is null, ``DOCKER_HOST``, defaulting to
``unix:///var/run/docker.sock``. ``unix://`` and ``tcp://`` (plain HTTP) endpoints are spoken; TLS
(``DOCKER_TLS_VERIFY``) and ``ssh://`` are not: a device talks to its own engine over the local socket,
and a TLS stack would cost the agent more memory than the rest of it (the check says so when asked to).

Every request opens its own connection and closes it (a unix socket connection costs microseconds), so
nothing is shared between checks or threads and a restarted engine is simply found again. All the requests
of one check together are bounded by its ``timeout``, and each answer by :data:`MAX_ANSWER` bytes.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from typing import Any

from piccolod import http_client
from piccolod.policy import PolicyFile
from piccolod.result import Outcome

DEFAULT_HOST = "unix:///var/run/docker.sock"
MAX_ANSWER = 4 * 1024 * 1024  # a list of a thousand containers is about 1 MiB
MAX_REASON = 200
# The health filters, URL-encoded: {"health":["unhealthy"]} and {"health":["starting"]}.
_FILTER = "/containers/json?filters=%7B%22health%22%3A%5B%22{}%22%5D%7D"
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")


class EngineError(Exception):
    """The engine answered, but not with what the check asked for."""


def docker_host(policy: PolicyFile) -> str:
    """The endpoint the checks talk to, as shown in the details."""
    configured = policy.health_policy.checks.docker.host
    if configured is not None:
        return configured
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def engine_endpoint(policy: PolicyFile) -> http_client.Endpoint:
    if policy.health_policy.checks.docker.host is None and os.environ.get("DOCKER_TLS_VERIFY"):
        raise ValueError("DOCKER_TLS_VERIFY is set, and piccolod speaks to the engine without TLS")
    return http_client.endpoint(docker_host(policy))


def ask(ep: http_client.Endpoint, path: str, deadline: float, timeout: float) -> Any:
    """The JSON answer to ``GET path``; :class:`EngineError` for an HTTP error answer."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"timed out after {timeout:g}s")
    answer = http_client.get(ep, path, left, max_body=MAX_ANSWER)
    if answer.status != 200:
        message = ""
        try:
            doc = answer.json()
            message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
        except http_client.HttpError:
            pass
        said = f": {message}" if message else ""
        raise EngineError(f"GET {_bare(path)} answered HTTP {answer.status}{said}")
    return answer.json()


def _bare(path: str) -> str:
    return path.partition("?")[0]


def why(exc: BaseException) -> str:
    """A one-line, bounded reason."""
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def check_docker(policy: PolicyFile, timeout: float) -> Outcome:
    host = docker_host(policy)
    details: dict[str, Any] = {"version": None, "api_version": None, "host": host}
    try:
        version = ask(engine_endpoint(policy), "/version", time.monotonic() + timeout, timeout)
        _expect(isinstance(version, dict), "GET /version did not answer a JSON object")
    except (OSError, ValueError, http_client.HttpError, EngineError) as exc:
        return Outcome(False, f"Docker engine at {host} is not answering: {why(exc)}", details)
    details["version"] = _text(version.get("Version"))
    details["api_version"] = _text(version.get("ApiVersion"))
    return Outcome(True, f"Docker {details['version']} answers at {host}", details)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:64]


def started_at(text: str) -> float:
    """Seconds since the epoch from the engine's RFC 3339 ``State.StartedAt`` (nanoseconds, ``Z``)."""
    return datetime.fromisoformat(text).timestamp()


def _name(names: Any, fallback: str) -> str:
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0].lstrip("/")
    if isinstance(names, str):
        return names.lstrip("/")
    return fallback[:12]


def _expect(ok: bool, otherwise: str) -> None:
    if not ok:
        raise EngineError(otherwise)


def _listed(answer: Any, path: str) -> list[dict[str, Any]]:
    ok = isinstance(answer, list) and all(isinstance(c, dict) for c in answer)
    _expect(ok, f"GET {_bare(path)} did not answer a list of containers")
    return list(answer)


def _states(ep: http_client.Endpoint, timeout: float) -> tuple[int, list[str], list[tuple[str, float]]]:
    """(running count, unhealthy names, (name, StartedAt) of those still starting)."""
    deadline = time.monotonic() + timeout
    running = _listed(ask(ep, "/containers/json", deadline, timeout), "/containers/json")
    unhealthy_path, starting_path = _FILTER.format("unhealthy"), _FILTER.format("starting")
    unhealthy = _listed(ask(ep, unhealthy_path, deadline, timeout), unhealthy_path)
    starting: list[tuple[str, float]] = []
    for c in _listed(ask(ep, starting_path, deadline, timeout), starting_path):
        cid = str(c.get("Id", ""))
        if not _CONTAINER_ID.fullmatch(cid):
            raise EngineError(f"the engine listed a container with the id {cid[:80]!r}")
        try:
            state = ask(ep, f"/containers/{cid}/json", deadline, timeout)
        except EngineError as exc:
            if " 404" in str(exc):  # gone since it was listed
                continue
            raise
        if not isinstance(state, dict) or not isinstance(state.get("State"), dict):
            raise EngineError(f"GET /containers/{cid[:12]}/json did not answer a container")
        try:
            when = started_at(str(state["State"].get("StartedAt", "")))
        except ValueError:
            raise EngineError(f"container {cid[:12]} has no readable State.StartedAt") from None
        starting.append((_name(state.get("Name"), cid), when))
    return (
        len(running),
        sorted(_name(c.get("Names"), str(c.get("Id", "?"))) for c in unhealthy),
        sorted(starting),
    )


def check_containers(policy: PolicyFile, timeout: float) -> Outcome:
    limit = policy.health_policy.thresholds.container_startup_seconds
    host = docker_host(policy)
    try:
        count, unhealthy, starting_since = _states(engine_endpoint(policy), timeout)
    except (OSError, ValueError, http_client.HttpError, EngineError) as exc:
        details = {"containers_running": 0, "unhealthy": [], "starting_too_long": [], "starting": []}
        return Outcome(False, f"cannot list containers at {host}: {why(exc)}", details)

    now = time.time()
    too_long = [name for name, since in starting_since if now - since > limit]
    starting = [name for name, since in starting_since if now - since <= limit]
    details = {
        "containers_running": count,
        "unhealthy": unhealthy,
        "starting_too_long": too_long,
        "starting": starting,
    }
    problems = []
    if unhealthy:
        problems.append(f"unhealthy: {', '.join(unhealthy)}")
    if too_long:
        problems.append(f"starting for more than {limit:g}s: {', '.join(too_long)}")
    if problems:
        return Outcome(False, "; ".join(problems), details)
    waiting = f", {len(starting)} still starting" if starting else ""
    return Outcome(True, f"{count} containers running, none unhealthy{waiting}", details)
