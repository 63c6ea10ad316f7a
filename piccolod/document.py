"""The health document served at ``GET /api/v1/system/health`` and printed by ``piccolod check --json``.

It carries every field of the seed's example with real values (status, timestamp, version, boot_id,
uptime_seconds, components with their seed fields, update_status, disk_encryption,
startup_health_check) plus what explains a verdict: each component's reason, duration and whether it
is required, the rollback reason and the last assessment's timing. The operator's own checks that run
are components too (with their ``kind`` and ``details``), and ``checks`` lists every declared check,
run or not, with its state: a disabled, skipped or refused check is never silently absent.
``timestamp`` and ``uptime_seconds`` are taken when the document is built (once per assessment or
state change), so a request only copies bytes. The machine facts it reads (boot id, uptime, disk
encryption) have small, path-injectable readers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piccolod import __version__
from piccolod.assess import Assessment
from piccolod.logs import rfc3339
from piccolod.policy import Component, Declared
from piccolod.result import CheckResult, CheckState, Status

STARTING = "starting"  # the status before the first assessment

# Component -> the seed's fields taken from that component's check details.
SEED_FIELDS: dict[Component, tuple[str, ...]] = {
    Component.DOCKER: ("version",),
    Component.CONTAINERS: ("containers_running", "unhealthy", "starting"),
    Component.TPM: ("version", "manufacturer"),
    Component.STORAGE: ("free_space_percent", "io_errors"),
    Component.NETWORK: ("connectivity_test", "dns_resolution"),
    Component.API: (),
}


@dataclass(frozen=True)
class Facts:
    """What the document says about the machine and the agent, besides the assessment."""

    boot_id: str
    disk_encryption: str
    pid: int
    started_monotonic: float


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def system_uptime(path: Path = Path("/proc/uptime")) -> float:
    try:
        return float(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def _mount_devices(mountinfo: Path, mounts: tuple[str, ...]) -> dict[str, str]:
    """Mount point -> ``major:minor`` of the file system mounted there (last mount wins)."""
    found: dict[str, str] = {}
    for line in mountinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[4] in mounts:
            found[parts[4]] = parts[2]
    return found


def _crypt_kind(dev: Path, depth: int = 0) -> str | None:
    """``luks``/``dm-crypt`` if ``dev`` (a /sys/dev/block entry) or a device below it is encrypted."""
    try:
        uuid = (dev / "dm" / "uuid").read_text(encoding="ascii").strip()
    except OSError:
        uuid = ""
    if uuid.startswith("CRYPT-LUKS"):
        return "luks"
    if uuid.startswith("CRYPT-"):
        return "dm-crypt"
    slaves = dev / "slaves"
    if depth < 8 and slaves.is_dir():
        for below in sorted(slaves.iterdir()):
            kind = _crypt_kind(below, depth + 1)
            if kind:
                return kind
    return None


def disk_encryption(
    mounts: tuple[str, ...] = ("/", "/var"),
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    sys_block: Path = Path("/sys/dev/block"),
) -> str:
    """``luks`` or ``dm-crypt`` when the root or /var file system sits on a dm-crypt mapping, ``none``
    when they are on plain block devices, ``unknown`` when that cannot be told (virtual file systems)."""
    try:
        devices = _mount_devices(mountinfo, mounts)
    except OSError:
        return "unknown"
    real = [d for d in devices.values() if not d.startswith("0:")]
    if not real:
        return "unknown"
    for dev in real:
        kind = _crypt_kind(sys_block / dev)
        if kind:
            return kind
    return "none"


def _status(res: CheckResult) -> str:
    if not res.counted:
        return str(res.state)
    return "healthy" if res.healthy else "unhealthy"


def _component(res: CheckResult | None, comp: Component) -> dict[str, Any]:
    fields = SEED_FIELDS[comp]
    if res is None:
        return {"status": "not_checked", **dict.fromkeys(fields)}
    return {
        "status": _status(res),
        **{k: res.details.get(k) for k in fields},
        "required": res.required,
        "reason": res.reason,
        "duration_seconds": round(res.duration_seconds, 6),
    }


def _custom(res: CheckResult | None, declared: Declared) -> dict[str, Any]:
    """A check of the operator's own that runs, as a component."""
    if res is None:
        return {"status": "pending", "kind": declared.kind, "required": declared.required}
    return {
        "status": _status(res),
        "kind": declared.kind,
        "required": res.required,
        "reason": res.reason,
        "duration_seconds": round(res.duration_seconds, 6),
        "details": dict(res.details),
    }


def _checks(assessment: Assessment | None, catalog: tuple[Declared, ...]) -> dict[str, Any]:
    """Every declared check: its kind, weight, where it runs, and the state of its last run."""
    out: dict[str, Any] = {}
    for d in catalog:
        res = assessment.result(d.name) if assessment is not None and d.enabled else None
        if res is not None:
            state, reason = str(res.state), res.reason
        elif d.disabled is not None:
            state, reason = str(CheckState.DISABLED), d.disabled
        else:
            state, reason = str(CheckState.PENDING), None
        out[d.name] = {
            "kind": d.kind,
            "enabled": d.enabled,
            "required": d.required,
            "run_on": [str(p) for p in d.run_on],
            "state": state,
            "reason": reason,
        }
    return out


def build(
    assessment: Assessment | None,
    facts: Facts,
    *,
    startup_health_check: str,
    update_status: str,
    rollback_reason: str | None,
    checked: tuple[str, ...],
    now: float | None = None,
    policy_error: str | None = None,
    catalog: tuple[Declared, ...] = (),
) -> dict[str, Any]:
    """The document as plain data. ``assessment`` is the effective one (after hysteresis); ``catalog``
    the policy's declared checks (:meth:`~piccolod.policy.HealthPolicy.catalog`)."""
    now = time.time() if now is None else now
    comps: dict[str, Any] = {
        "piccolod": {
            "status": "healthy",
            "version": __version__,
            "pid": facts.pid,
            "uptime_seconds": round(time.monotonic() - facts.started_monotonic, 3),
        }
    }
    for comp in Component:
        res = assessment.result(comp) if assessment is not None else None
        entry = _component(res, comp)
        if res is None and assessment is None and comp in checked:
            entry["status"] = "pending"
        comps[str(comp)] = entry
    containers = comps[Component.CONTAINERS]
    comps[Component.DOCKER]["containers_running"] = containers.get("containers_running")
    for d in catalog:
        if d.enabled and not isinstance(d.name, Component):
            comps[d.name] = _custom(assessment.result(d.name) if assessment is not None else None, d)
    doc: dict[str, Any] = {
        "status": str(assessment.status) if assessment is not None else STARTING,
        "timestamp": rfc3339(now),
        "version": __version__,
        "boot_id": facts.boot_id,
        "uptime_seconds": int(system_uptime()),
        "components": comps,
        "update_status": update_status,
        "disk_encryption": facts.disk_encryption,
        "startup_health_check": startup_health_check,
        "rollback_reason": rollback_reason,
        "last_assessment": None,
        "checks": _checks(assessment, catalog),
    }
    if policy_error is not None:  # the configured policy did not load: this one is a fallback
        doc["policy_error"] = policy_error
    if assessment is not None:
        doc["last_assessment"] = {
            "started": rfc3339(assessment.started),
            "duration_seconds": round(assessment.duration_seconds, 6),
            "failing": [str(c) for c in assessment.failing()],
        }
    return doc


def http_status(doc: Mapping[str, Any]) -> int:
    """200 for healthy and degraded, 503 otherwise (unhealthy, or no verdict yet)."""
    return 200 if doc["status"] in (Status.HEALTHY, Status.DEGRADED) else 503


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, default=str, separators=(",", ":"), sort_keys=False).encode() + b"\n"


def current_facts(mounts: tuple[str, ...] = ("/", "/var")) -> Facts:
    return Facts(
        boot_id=boot_id(),
        disk_encryption=disk_encryption(mounts),
        pid=os.getpid(),
        started_monotonic=time.monotonic(),
    )
