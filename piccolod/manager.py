"""What the agent asks of the service manager besides ``sd_notify``: start update-engine, reboot.

Both go through the agent's one process helper (:mod:`piccolod.run`), bounded in time, with its small
environment (:func:`piccolod.run.base_env`).

- :func:`start_update_engine` runs ``systemctl start --no-block update-engine.service`` after a gate
  passed on a slot that is not marked good. It is a no-op when update-engine already runs or is
  waiting for the guard; it is needed when the guard gave up waiting (its deadline passed before a
  late pass): update-engine's start job failed with the guard, and nothing else queues it again. The
  new job pulls the guard in again (``Requires=``), which now finds the pass token and lets it through.
- :func:`run_reboot` runs the policy's reboot command once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence

from piccolod import run

log = logging.getLogger("piccolod.gate")

UPDATE_ENGINE_START = ("systemctl", "start", "--no-block", "update-engine.service")
SYSTEMCTL_TIMEOUT = 60.0


def _text(data: bytes) -> str:
    return " ".join(data.decode("utf-8", "replace").split())[:300]


def start_update_engine(argv: Sequence[str] = UPDATE_ENGINE_START) -> threading.Thread:
    """Ask systemd to start update-engine, from a daemon thread (the agent never waits for it)."""

    def work() -> None:
        try:
            done = run.run(argv, SYSTEMCTL_TIMEOUT, run.base_env())
        except (OSError, run.ChildTimeout) as e:
            log.error("cannot ask systemd to start update-engine (%s): %s", " ".join(argv), e)  # noqa: TRY400
            return
        if done.returncode != 0:
            log.error("%s exited %d: %s", " ".join(argv), done.returncode, _text(done.stderr))
        else:
            log.info("asked systemd to start update-engine: %s", " ".join(argv))

    t = threading.Thread(target=work, name="start-update-engine", daemon=True)
    t.start()
    return t


def run_reboot(argv: Sequence[str]) -> str | None:
    """Run the reboot command once; returns an error text, or None when it exited 0.

    ``systemctl reboot`` ended by SIGTERM or SIGKILL counts as done: PID 1 stops this unit's cgroup, the
    command with it, as soon as the shutdown it queued begins, sometimes before the command has read its
    reply.
    """
    try:
        done = run.run(argv, SYSTEMCTL_TIMEOUT, run.base_env())
    except (OSError, run.ChildTimeout) as e:
        return f"{argv[0]}: {e}"
    if done.returncode in (-signal.SIGTERM, -signal.SIGKILL):
        log.info("%s was ended by a signal: the shutdown it asked for has begun", " ".join(argv))
        return None
    if done.returncode != 0:
        return f"{' '.join(argv)} exited {done.returncode}: {_text(done.stderr)[:200]}"
    return None
