"""The ``docker`` and ``containers`` checks, through the Docker SDK (Engine API over a socket).

``docker``: the engine answers ``GET /version`` (one request: an answer is as good as a ping, and it
carries what the details show); details carry its version, API version and the endpoint used.
``containers``: among running containers, any whose ``HEALTHCHECK`` says ``unhealthy``, or that is still
``starting`` more than ``thresholds.container_startup_seconds`` after it started, fails the check.
``starting`` lists containers still inside that grace period; ``starting_too_long`` those past it (the
two lists never overlap). Containers without a health check count as running and nothing more.

The endpoint is ``checks.docker.host``; when that is null the environment decides (``DOCKER_HOST``,
``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``, as ``docker.from_env`` reads them), defaulting to
``unix:///var/run/docker.sock``.

One client per endpoint (and timeout) lives as long as the agent: it is made on first use, when it
negotiates the Engine API version with the daemon (one request), and both checks share it; its
connection pool is thread-safe and keeps the unix socket connection open between checks, so a check
costs its own requests only. When an exchange fails for any reason but an HTTP error answer (engine
gone, socket reset, deadline passed), the client is dropped and closed, and the next check connects and
negotiates afresh: a restarted ``dockerd`` (maybe a newer one) is picked up at the next interval. All
the requests of one check together are bounded by ``timeout``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from piccolod.checks.bounded import race
from piccolod.policy import PolicyFile
from piccolod.result import Outcome

DEFAULT_HOST = "unix:///var/run/docker.sock"
T = TypeVar("T")


def docker_host(policy: PolicyFile) -> str:
    """The endpoint the checks talk to, as shown in the details."""
    configured = policy.health_policy.checks.docker.host
    if configured is not None:
        return configured
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


ClientKey = tuple[str | None, str | None, str | None, str | None, float]

_clients: dict[ClientKey, Any] = {}
_clients_lock = threading.Lock()


def _key(policy: PolicyFile, timeout: float) -> ClientKey:
    env = os.environ
    configured = policy.health_policy.checks.docker.host
    if configured is not None:
        return (configured, None, None, None, timeout)
    return (None, env.get("DOCKER_HOST"), env.get("DOCKER_TLS_VERIFY"), env.get("DOCKER_CERT_PATH"), timeout)


def _client(key: ClientKey) -> Any:
    """The shared client for ``key``, made (and the API version negotiated) on first use."""
    with _clients_lock:
        client = _clients.get(key)
    if client is not None:
        return client
    import docker

    configured, _, _, _, timeout = key
    if configured is None:
        client = docker.from_env(timeout=timeout)
    else:
        client = docker.DockerClient(base_url=configured, timeout=timeout)
    with _clients_lock:
        winner = _clients.setdefault(key, client)
    if winner is not client:  # another check made one at the same time: use that one
        client.close()
    return winner


def _drop(key: ClientKey, client: Any) -> None:
    """Forget ``client`` (if it is still the shared one) and close it: the next check reconnects."""
    with _clients_lock:
        if _clients.get(key) is client:
            del _clients[key]
    with contextlib.suppress(Exception):  # closing a broken client may fail too; it is forgotten anyway
        client.close()


def close_clients() -> None:
    """Close every shared client (the agent is stopping; tests)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        with contextlib.suppress(Exception):  # best effort at shutdown
            client.close()


def _with_client(policy: PolicyFile, timeout: float, work: Callable[[Any], T]) -> T:
    """Run ``work(client)`` on the shared client; the whole exchange is bounded by ``timeout``."""
    key = _key(policy, timeout)
    used: list[Any] = []

    def job() -> T:
        client = _client(key)
        used.append(client)
        return work(client)

    result = race({"docker": job}, timeout)["docker"]
    if isinstance(result, BaseException):
        if used and not _is_http_answer(result):
            _drop(key, used[0])
        raise result
    return result


def _is_http_answer(exc: BaseException) -> bool:
    """True when the engine answered with an HTTP error: the connection itself is fine."""
    import docker.errors

    return isinstance(exc, docker.errors.APIError) and exc.response is not None


def _why(exc: BaseException) -> str:
    """A one-line reason from the Docker SDK's (often nested, multi-line) exceptions."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_docker(policy: PolicyFile, timeout: float) -> Outcome:
    host = docker_host(policy)
    details: dict[str, Any] = {"version": None, "api_version": None, "host": host}

    def ask(client: Any) -> dict[str, Any]:
        version: dict[str, Any] = client.version()
        return version

    try:
        version = _with_client(policy, timeout, ask)
    except Exception as exc:  # any failure to talk to the engine is the verdict
        return Outcome(False, f"Docker engine at {host} is not answering: {_why(exc)}", details)
    details["version"] = version.get("Version")
    details["api_version"] = version.get("ApiVersion")
    return Outcome(True, f"Docker {details['version']} answers at {host}", details)


def started_at(text: str) -> float:
    """Seconds since the epoch from the engine's RFC 3339 ``State.StartedAt`` (nanoseconds, ``Z``)."""
    return datetime.fromisoformat(text).timestamp()


def _states(client: Any) -> list[tuple[str, str | None, str]]:
    """(name, health status or None, StartedAt) of each running container."""
    out = []
    for container in client.containers.list(ignore_removed=True):
        state = container.attrs.get("State", {})
        health = (state.get("Health") or {}).get("Status")
        out.append((str(container.name), health, str(state.get("StartedAt", ""))))
    return out


def check_containers(policy: PolicyFile, timeout: float) -> Outcome:
    limit = policy.health_policy.thresholds.container_startup_seconds
    host = docker_host(policy)
    try:
        states = _with_client(policy, timeout, _states)
    except Exception as exc:  # any failure to talk to the engine is the verdict
        details = {"containers_running": 0, "unhealthy": [], "starting_too_long": [], "starting": []}
        return Outcome(False, f"cannot list containers at {host}: {_why(exc)}", details)

    now = time.time()
    unhealthy: list[str] = []
    too_long: list[str] = []
    starting: list[str] = []
    for name, health, started in sorted(states):
        if health == "unhealthy":
            unhealthy.append(name)
        elif health == "starting":
            (too_long if now - started_at(started) > limit else starting).append(name)
    details = {
        "containers_running": len(states),
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
    return Outcome(True, f"{len(states)} containers running, none unhealthy{waiting}", details)
