"""The ``docker`` and ``containers`` checks, through the Docker SDK (Engine API over a socket).

``docker``: the engine answers a ping; details carry its version, API version and the endpoint used.
``containers``: among running containers, any whose ``HEALTHCHECK`` says ``unhealthy``, or that is still
``starting`` more than ``thresholds.container_startup_seconds`` after it started, fails the check.
``starting`` lists containers still inside that grace period; ``starting_too_long`` those past it (the
two lists never overlap). Containers without a health check count as running and nothing more.

The endpoint is ``checks.docker.host``; when that is null the environment decides (``DOCKER_HOST``,
``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``, as ``docker.from_env`` reads them), defaulting to
``unix:///var/run/docker.sock``. A new client is opened and closed on every call (thread-safe, no
leaked connections), and all its requests together are bounded by ``timeout``.
"""

from __future__ import annotations

import os
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


def _with_client(policy: PolicyFile, timeout: float, work: Callable[[Any], T]) -> T:
    """Open a client, run ``work(client)``, close it; the whole exchange is bounded by ``timeout``."""

    def job() -> T:
        import docker

        configured = policy.health_policy.checks.docker.host
        if configured is None:
            client = docker.from_env(timeout=timeout)
        else:
            client = docker.DockerClient(base_url=configured, timeout=timeout)
        try:
            return work(client)
        finally:
            client.close()

    result = race({"docker": job}, timeout)["docker"]
    if isinstance(result, BaseException):
        raise result
    return result


def _why(exc: BaseException) -> str:
    """A one-line reason from the Docker SDK's (often nested, multi-line) exceptions."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_docker(policy: PolicyFile, timeout: float) -> Outcome:
    host = docker_host(policy)
    details: dict[str, Any] = {"version": None, "api_version": None, "host": host}

    def ask(client: Any) -> dict[str, Any]:
        client.ping()
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
