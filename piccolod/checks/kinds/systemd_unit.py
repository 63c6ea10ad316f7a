"""``systemd_unit``: a unit is active, and systemd restarted it at most ``max_restarts`` times.

Asked with ``systemctl show --property=... -- UNIT`` through the agent's process helper
(:mod:`piccolod.run`), bounded by the check's deadline: ``systemctl show`` prints properties as
``KEY=VALUE`` lines meant for programs, and talks to PID 1 over its private socket as the agent's other
``systemctl`` calls do. (Speaking D-Bus ourselves would save the process, but means writing and
maintaining a D-Bus wire-protocol client in the standard library; a check every
``interval_seconds`` can afford one short-lived process.)

- ``LoadState`` must be ``loaded`` (``not-found``, ``masked``, ``bad-setting``, ``error`` fail);
- ``ActiveState`` ``active`` or ``reloading`` passes, ``activating`` is ``unknown`` (still starting:
  the gate keeps waiting), ``failed``, ``inactive`` and ``deactivating`` fail. A ``oneshot`` service
  without ``RemainAfterExit=yes`` is ``inactive`` once it has run: check what it leaves behind instead;
- ``NRestarts`` (systemd 235 and later; the automatic restarts since the unit was last started by
  hand) must not exceed ``max_restarts`` when that is set.
"""

from __future__ import annotations

from typing import Any

from piccolod import run
from piccolod.checkspec import SystemdUnitCheck
from piccolod.policy import PolicyFile
from piccolod.result import CheckState, Outcome
from piccolod.text import one_line

PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "NRestarts")
RUNNING = ("active", "reloading", "refreshing")


def show(unit: str, timeout: float) -> dict[str, str]:
    """The unit's :data:`PROPERTIES`; ``OSError``, ``ChildTimeout`` or ``RuntimeError`` when systemctl
    cannot say."""
    argv = ["systemctl", "show", *(f"--property={p}" for p in PROPERTIES), "--", unit]
    done = run.run(argv, timeout, run.base_env())
    if done.returncode != 0:
        said = one_line(done.stderr.decode("utf-8", "replace")) or "no message"
        raise RuntimeError(f"systemctl show exited {done.returncode}: {said}")
    props = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value
    return props


def check_systemd_unit(  # noqa: PLR0911 - one return per verdict, in the order they are judged
    name: str, spec: SystemdUnitCheck, policy: PolicyFile, timeout: float
) -> Outcome:
    unit = spec.unit
    details: dict[str, Any] = {
        "unit": unit,
        "load_state": None,
        "active_state": None,
        "sub_state": None,
        "result": None,
        "restarts": None,
    }
    try:
        props = show(unit, timeout)
    except run.ChildTimeout:
        return Outcome(False, f"systemctl show {unit} gave no answer within {timeout:g}s", details)
    except (OSError, RuntimeError) as exc:
        return Outcome(
            False, f"cannot ask systemd about {unit}: {one_line(str(exc))}", details, CheckState.UNKNOWN
        )
    restarts = props.get("NRestarts", "")
    details.update(
        load_state=props.get("LoadState"),
        active_state=props.get("ActiveState"),
        sub_state=props.get("SubState"),
        result=props.get("Result"),
        restarts=int(restarts) if restarts.isdigit() else None,
    )
    load, active, sub = details["load_state"], details["active_state"], details["sub_state"]
    if load != "loaded":
        return Outcome(False, f"{unit} is not loaded ({load})", details)
    if active == "activating":
        return Outcome(False, f"{unit} is still activating ({sub})", details, CheckState.UNKNOWN)
    if active not in RUNNING:
        result = f", result {details['result']}" if details["result"] not in (None, "", "success") else ""
        return Outcome(False, f"{unit} is {active} ({sub}{result})", details)
    if (
        spec.max_restarts is not None
        and details["restarts"] is not None
        and details["restarts"] > spec.max_restarts
    ):
        return Outcome(
            False, f"{unit} was restarted {details['restarts']} times, more than {spec.max_restarts}", details
        )
    return Outcome(True, f"{unit} is {active} ({sub})", details)
