"""``container``: a Docker container runs, is healthy when it has a ``HEALTHCHECK``, and the engine
restarted it at most ``max_restarts`` times.

One request to the engine of ``checks.docker.host`` (as the built-in docker checks speak it, with the
standard library): ``GET /containers/{name}/json``, by name or id. ``State.Running`` must be true;
``State.Health.Status`` (present only with a health check) ``healthy`` passes, ``unhealthy`` fails and
``starting`` is ``unknown`` (the gate keeps waiting); ``RestartCount`` (the engine's restarts under its
restart policy) must not exceed ``max_restarts`` when that is set (judged first: a container in a
restart loop is reported as that, whether or not it runs at the moment). No such container fails.
"""

from __future__ import annotations

import time
from typing import Any

from piccolod import http_client
from piccolod.checks.docker import EngineError, ask, docker_host, engine_endpoint, why
from piccolod.checkspec import ContainerCheck
from piccolod.policy import PolicyFile
from piccolod.result import CheckState, Outcome


def check_container(  # noqa: PLR0911 - one return per verdict, in the order they are judged
    name: str, spec: ContainerCheck, policy: PolicyFile, timeout: float
) -> Outcome:
    details: dict[str, Any] = {"container": spec.name, "status": None, "health": None, "restarts": None}
    try:
        doc = ask(
            engine_endpoint(policy), f"/containers/{spec.name}/json", time.monotonic() + timeout, timeout
        )
    except EngineError as exc:
        if " 404" in str(exc):
            return Outcome(False, f"no container {spec.name} at {docker_host(policy)}", details)
        return Outcome(False, f"container {spec.name}: {why(exc)}", details)
    except (OSError, ValueError, http_client.HttpError) as exc:
        return Outcome(False, f"cannot ask the engine at {docker_host(policy)}: {why(exc)}", details)
    state = doc.get("State") if isinstance(doc, dict) else None
    if not isinstance(state, dict):
        return Outcome(False, f"the engine's answer about {spec.name} has no State", details)
    health = state.get("Health")
    restarts = doc.get("RestartCount")
    details.update(
        status=str(state.get("Status"))[:32],
        health=str(health.get("Status"))[:32] if isinstance(health, dict) else None,
        restarts=restarts if isinstance(restarts, int) and not isinstance(restarts, bool) else None,
    )
    if (
        spec.max_restarts is not None
        and details["restarts"] is not None
        and details["restarts"] > spec.max_restarts
    ):
        return Outcome(
            False,
            f"container {spec.name} was restarted {details['restarts']} times, more than {spec.max_restarts}",
            details,
        )
    if state.get("Running") is not True:
        return Outcome(False, f"container {spec.name} is not running ({details['status']})", details)
    if details["health"] == "unhealthy":
        return Outcome(False, f"container {spec.name} is unhealthy", details)
    if details["health"] not in (None, "healthy"):
        return Outcome(
            False,
            f"container {spec.name} is {details['health']} (its health check has not passed yet)",
            details,
            CheckState.UNKNOWN,
        )
    health_note = ", healthy" if details["health"] == "healthy" else ""
    return Outcome(True, f"container {spec.name} is running{health_note}", details)
