"""``container`` checks against the real private dockerd: running, healthy, starting, unhealthy, exited,
restarting under a restart policy, missing, and an engine that is not there."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from piccolod.checks.kinds.container import check_container
from piccolod.checkspec import ContainerCheck
from piccolod.result import CheckState, Outcome
from tests.fixtures.daemons import BUSYBOX_IMAGE, Dockerd
from tests.test_checks_docker import Run, policy, run, wait_health  # noqa: F401 - run is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.privileged]


def check(host: str, name: str, max_restarts: int | None = None, timeout: float = 5.0) -> Outcome:
    return check_container("app", ContainerCheck(name=name, max_restarts=max_restarts), policy(host), timeout)


def test_running_containers_pass_by_name_or_id(dockerd: Dockerd, run: Run) -> None:  # noqa: F811
    plain = run(None)
    good = run(["true"])
    wait_health(good, "healthy")
    out = check(dockerd.host, plain.name)
    assert out.healthy and out.reason == f"container {plain.name} is running"
    assert out.details == {"container": plain.name, "status": "running", "health": None, "restarts": 0}
    by_id = check(dockerd.host, good.id[:12])
    assert by_id.healthy and by_id.reason == f"container {good.id[:12]} is running, healthy"


def test_health_decides_when_there_is_a_health_check(dockerd: Dockerd, run: Run) -> None:  # noqa: F811
    bad = run(["false"])
    slow = run(["true"], interval_s=3600)  # first probe in an hour: stays "starting"
    wait_health(bad, "unhealthy")
    unhealthy = check(dockerd.host, bad.name)
    assert (unhealthy.healthy, unhealthy.state) == (False, None)
    assert unhealthy.reason == f"container {bad.name} is unhealthy"
    starting = check(dockerd.host, slow.name)
    assert (starting.healthy, starting.state) == (False, CheckState.UNKNOWN)
    assert starting.reason == f"container {slow.name} is starting (its health check has not passed yet)"


def test_an_exited_or_missing_container_fails(dockerd: Dockerd, run: Run) -> None:  # noqa: F811
    done = run(None, cmd="exit 3")
    deadline = time.monotonic() + 20
    while done.reload() or done.status != "exited":
        assert time.monotonic() < deadline, done.status
        time.sleep(0.1)
    out = check(dockerd.host, done.name)
    assert not out.healthy and out.reason == f"container {done.name} is not running (exited)"
    ghost = f"pt-gone-{uuid.uuid4().hex[:8]}"
    missing = check(dockerd.host, ghost)
    assert not missing.healthy and missing.reason == f"no container {ghost} at {dockerd.host}"


def test_restarts_above_the_limit_fail(dockerd: Dockerd) -> None:
    client = dockerd.client()
    box = client.containers.run(
        BUSYBOX_IMAGE, ["sh", "-c", "sleep 0.3; exit 1"], name=f"pt-loop-{uuid.uuid4().hex[:8]}", detach=True,
        network_mode="none", restart_policy={"Name": "always"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while box.reload() or box.attrs["RestartCount"] < 2:
            assert time.monotonic() < deadline, "the engine did not restart the container"
            time.sleep(0.1)
        out = check(dockerd.host, box.name, max_restarts=1)
        assert not out.healthy and out.details["restarts"] >= 2
        assert (
            out.reason == f"container {box.name} was restarted {out.details['restarts']} times, more than 1"
        )
        lenient = check(dockerd.host, box.name, max_restarts=1000)
        assert "restarted" not in lenient.reason
    finally:
        box.remove(force=True)
        client.close()


def test_an_engine_that_is_not_there_fails_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    out = check(f"unix://{tmp_path}/docker.sock", "acme-app", timeout=2.0)
    assert not out.healthy
    assert out.reason.startswith(f"cannot ask the engine at unix://{tmp_path}/docker.sock: ")
    assert time.monotonic() - started < 1.0
