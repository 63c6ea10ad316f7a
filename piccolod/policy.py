"""The health policy: what piccolod checks, how strictly, and what it does when checks fail.

The file format extends the seed's ``health_policy`` block (see ``docs/agent.md``, whose key names are the
contract). Vendor default ``/usr/lib/piccolod/health-policy.yaml``; the administrator's
``/etc/piccolod/health-policy.yaml`` overrides it key by key; ``--config FILE`` uses that file alone.
Checks can also come from drop-in directories beside each file (:mod:`piccolod.dropins`); what a check
declares is in :mod:`piccolod.checkspec`, the value checks in :mod:`piccolod.values`. The builder
imports this module to validate the policy it bakes into the image.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piccolod import dropins
from piccolod.checkspec import (
    ApiCheck,
    Checks,
    Component,
    ContainersCheck,
    DockerCheck,
    Effective,
    ExecCheck,
    NetworkCheck,
    Phase,
    StorageCheck,
    TpmCheck,
    check_name,
)
from piccolod.model import FieldError, ModelError, Source, build, merge, meta
from piccolod.values import (
    Between,
    absolute_path,
    argv,
    between,
    each,
    host_port,
    safe_text,
    split_host_port,
    state_dir,
)

VENDOR_POLICY = Path("/usr/lib/piccolod/health-policy.yaml")
ADMIN_POLICY = Path("/etc/piccolod/health-policy.yaml")


class FailureCondition(enum.StrEnum):
    CRITICAL_COMPONENT_FAILURE = "critical_component_failure"
    STARTUP_TIMEOUT = "startup_timeout"
    API_UNRESPONSIVE_300S = "api_unresponsive_300s"


class OnPreExisting(enum.StrEnum):
    """What a gate does when every required check that fails failed before the update too."""

    FAIL = "fail"  # hold the slot, as any required failure does
    WARN = "warn"  # mark the slot; the gate's outcome is "warned" (and its alert fires)


class AllOptionalFailed(enum.StrEnum):
    """The status when every optional component fails (and every required one passes)."""

    UNHEALTHY = "unhealthy"
    DEGRADED = "degraded"


# --- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Startup:
    """The gate on the first boot of a freshly updated /usr slot."""

    timeout_seconds: float = field(
        default=120.0, metadata=meta("startup deadline (0.1-3600 s)", check=between(0.1, 3600, "seconds"))
    )
    required_components: tuple[str, ...] = field(
        default=(Component.TPM, Component.STORAGE, Component.API),
        metadata=meta("checks that must pass for the slot to be marked good", check=each(check_name)),
    )
    optional_components: tuple[str, ...] = field(
        default=(Component.DOCKER, Component.NETWORK),
        metadata=meta("checks that are run and reported but only degrade the status", check=each(check_name)),
    )
    optional_all_failed: AllOptionalFailed = field(
        default=AllOptionalFailed.UNHEALTHY,
        metadata=meta("the status when every optional component fails: unhealthy or degraded"),
    )

    def validate(self) -> None:
        for name in ("required_components", "optional_components"):
            items: tuple[str, ...] = getattr(self, name)
            for i, comp in enumerate(items):
                if comp in items[:i]:
                    raise FieldError((name, i), f"'{comp}' is listed twice")
        for i, comp in enumerate(self.optional_components):
            if comp in self.required_components:
                raise FieldError(("optional_components", i), f"'{comp}' is both required and optional")


@dataclass(frozen=True)
class Runtime:
    check_interval_seconds: float = field(
        default=60.0,
        metadata=meta("seconds between assessments (0.05-86400)", check=between(0.05, 86400, "seconds")),
    )
    failure_threshold: int = field(
        default=3,
        metadata=meta(
            "consecutive failures before a component counts as failed (1-1000)", check=between(1, 1000)
        ),
    )


@dataclass(frozen=True)
class Rollback:
    enable_automatic: bool = field(
        default=True, metadata=meta("reboot into the previous slot when the gate fails")
    )
    failure_conditions: tuple[FailureCondition, ...] = field(
        default=tuple(FailureCondition), metadata=meta("conditions that fail the gate")
    )
    reboot_grace_seconds: float = field(
        default=30.0,
        metadata=meta(
            "pause between the failed verdict and the reboot (0-3600 s)", check=between(0, 3600, "seconds")
        ),
    )
    reboot_command: tuple[str, ...] = field(
        default=("systemctl", "reboot"), metadata=meta("argv run once to reboot", check=argv)
    )
    on_pre_existing: OnPreExisting = field(
        default=OnPreExisting.FAIL,
        metadata=meta(
            "a gate whose every required failure also failed in the old slot's baseline: fail (hold the "
            "slot) or warn (mark it and raise the alert)"
        ),
    )

    def validate(self) -> None:
        if not self.failure_conditions:
            # With no condition nothing would ever reboot; say that with enable_automatic: false. (A gate
            # whose failure has no enabled condition still fails: the slot stays unmarked, no reboot.)
            raise FieldError(
                "failure_conditions",
                "must name at least one condition "
                "(to never reboot automatically, set enable_automatic: false)",
            )
        for i, cond in enumerate(self.failure_conditions):
            if cond in self.failure_conditions[:i]:
                raise FieldError(("failure_conditions", i), f"'{cond}' is listed twice")


@dataclass(frozen=True)
class Thresholds:
    min_disk_space_percent: float = field(
        default=10.0, metadata=meta("minimum free space per mount (0-100 %)", check=between(0, 100))
    )
    max_io_errors: int = field(
        default=0, metadata=meta("I/O errors tolerated per mount (0-1e9)", check=between(0, 1_000_000_000))
    )
    network_timeout_seconds: float = field(
        default=5.0,
        metadata=meta(
            "deadline of the docker, containers, storage, network and api checks (0.05-300 s)",
            check=between(0.05, 300, "seconds"),
        ),
    )
    tpm_operation_timeout_seconds: float = field(
        default=10.0, metadata=meta("TPM deadline (0.05-300 s)", check=between(0.05, 300, "seconds"))
    )
    container_startup_seconds: float = field(
        default=30.0,
        metadata=meta(
            "how long a container may stay 'starting' (0-86400 s)", check=between(0, 86400, "seconds")
        ),
    )


@dataclass(frozen=True)
class Declared:
    """A declared check as the API, the metrics and the logs show it, whether it runs or not."""

    name: str
    kind: str
    required: bool | None  # None: neither list names it
    disabled: str | None  # why it does not run (None: it runs)
    run_on: tuple[Phase, ...]

    @property
    def enabled(self) -> bool:
        return self.disabled is None


@dataclass(frozen=True)
class HealthPolicy:
    startup: Startup = field(default_factory=Startup)
    runtime: Runtime = field(default_factory=Runtime)
    rollback: Rollback = field(default_factory=Rollback)
    thresholds: Thresholds = field(default_factory=Thresholds)
    checks: Checks = field(default_factory=Checks)

    def validate(self) -> None:
        declared = set(self.checks.names())
        for key in ("required_components", "optional_components"):
            for i, name in enumerate(getattr(self.startup, key)):
                if name not in declared:
                    raise FieldError(
                        ("startup", key, i),
                        f"must be one of the built-in checks ({', '.join(Component)}) or a check declared "
                        f"under health_policy.checks; got {name!r}",
                    )
        for name in self.checks.names():
            spec = self.checks.spec(name)
            eff = self.options(name)
            if spec is not None and spec.explicit_timing and eff.timeout_seconds >= eff.interval_seconds:
                key = "timeout_seconds" if spec.timeout_seconds is not None else "interval_seconds"
                raise FieldError(
                    ("checks", name, key),
                    f"the timeout ({eff.timeout_seconds:g}s) must be below the interval "
                    f"({eff.interval_seconds:g}s): one run must end before the next is due",
                )

    def _listed(self) -> set[str]:
        listed = set(self.startup.required_components) | set(self.startup.optional_components)
        if Component.DOCKER in listed:
            listed.add(Component.CONTAINERS)
        return listed

    def checked(self) -> tuple[str, ...]:
        """Checks that run, in a stable order: the built-ins the startup lists name (containers whenever
        docker is), then the operator's by name; none with ``enabled: false``."""
        listed = self._listed()
        return tuple(n for n in self.checks.names() if n in listed and self.options(n).enabled)

    def declared(self) -> tuple[str, ...]:
        """Every check the policy knows, run or not: the six built-ins and the operator's."""
        return self.checks.names()

    def disabled(self, name: str) -> str | None:
        """Why a declared check does not run (None: it runs)."""
        if name not in self._listed():
            return "not named in startup.required_components or optional_components"
        if not self.options(name).enabled:
            return "enabled: false"
        return None

    def required(self, comp: str) -> bool:
        """Whether a failure of ``comp`` makes the machine unhealthy (containers follow docker)."""
        req = self.startup.required_components
        if comp == Component.CONTAINERS and comp not in self.startup.optional_components:
            return comp in req or Component.DOCKER in req
        return comp in req

    def options(self, name: str) -> Effective:
        """Check ``name``'s options with the policy-wide values for the ones it leaves null."""
        spec = self.checks.spec(name)
        thresholds = self.thresholds
        timeout = (
            thresholds.tpm_operation_timeout_seconds
            if name == Component.TPM
            else thresholds.network_timeout_seconds
        )
        base = spec if spec is not None else ApiCheck()
        return base.effective(
            timeout=timeout,
            interval=self.runtime.check_interval_seconds,
            failure_threshold=self.runtime.failure_threshold,
        )

    def runs_in(self, name: str, phase: Phase) -> bool:
        return phase in self.options(name).run_on

    def catalog(self) -> tuple[Declared, ...]:
        """Every declared check with its kind, weight and whether (and why not) it runs."""
        listed = self._listed()
        return tuple(
            Declared(
                name=name,
                kind=self.checks.kind(name),
                required=self.required(name) if name in listed else None,
                disabled=self.disabled(name),
                run_on=self.options(name).run_on,
            )
            for name in self.declared()
        )


def _usr_device(value: str) -> str:
    from piccolod.usrmount import valid_spec

    if not valid_spec(value):
        raise ValueError(
            "must be auto, device:/PATH (a block device) or image:N:/PATH (partition N of an image)"
        )
    return value


@dataclass(frozen=True)
class Boot:
    cmdline: str = field(
        default="/proc/cmdline", metadata=meta("kernel command line file", check=absolute_path)
    )
    usr_device: str = field(
        default="auto",
        metadata=meta(
            "auto (the partition mounted on /usr), or for tests only device:/PATH or image:N:/PATH",
            check=_usr_device,
        ),
    )


@dataclass(frozen=True)
class Agent:
    listen: str = field(default="127.0.0.1:8080", metadata=meta("HTTP API address", check=host_port))
    state_dir: str = field(default="/var/lib/piccolod", metadata=meta("state directory", check=state_dir))
    boot: Boot = field(default_factory=Boot)


@dataclass(frozen=True)
class PolicyFile:
    """A piccolod policy file: the ``health_policy`` and ``agent`` blocks."""

    health_policy: HealthPolicy = field(default_factory=HealthPolicy)
    agent: Agent = field(default_factory=Agent)


def load_policy(
    config: Path | None = None,
    *,
    vendor: Path = VENDOR_POLICY,
    admin: Path = ADMIN_POLICY,
    lint: bool = True,
) -> PolicyFile:
    """Load ``config`` and the drop-ins beside it, or the vendor layer overlaid by the admin layer.

    A layer is a policy file and the drop-in directories beside it (:mod:`piccolod.dropins`): the vendor
    file overlaid key by key with the admin file if present, each layer's drop-ins replacing whole
    checks by name. Missing vendor and admin files give the built-in defaults; a missing ``config`` is
    an error. ``lint`` also refuses what can only be seen on this machine: a check's program that is not
    there or not executable (the daemon loads without it, and shows such a check as refused).

    Every problem, whatever the files hold, is a :class:`ModelError` (one line), so the daemon can
    always fall back.
    """
    if config is not None:
        layers: list[tuple[Path, Path | None, bool]] = [(config, config.parent, True)]
    else:
        shared = vendor.parent == admin.parent  # one directory (tests): its drop-ins are read once
        layers = [(vendor, None if shared else vendor.parent, False), (admin, admin.parent, False)]
    data: Any = {}
    src = Source(str(layers[0][0]))
    weights: dict[str, bool] = {}
    for path, directory, must_exist in layers:
        layer = dropins.read_layer(path, directory, must_exist=must_exist)
        dropins.replace_dropins(data, layer)
        data = merge(data, layer.data, src, layer.src)
        weights.update(layer.weights)
    defaults = Startup()
    dropins.name_greenboot_checks(
        data,
        src,
        weights,
        {
            "required_components": defaults.required_components,
            "optional_components": defaults.optional_components,
        },
    )
    policy = build(PolicyFile, data, src)
    if lint:
        _lint(policy, src)
    return policy


def _lint(policy: PolicyFile, src: Source) -> None:
    """What the model cannot see: every ``exec`` check that runs has a program that can run here."""
    from piccolod.run import not_runnable

    hp = policy.health_policy
    for name in hp.checked():
        spec = hp.checks.spec(name)
        if isinstance(spec, ExecCheck):
            why = not_runnable(spec.command[0])
            if why is not None:
                raise src.error(("health_policy", "checks", name, "command", 0), why)


__all__ = [
    "ADMIN_POLICY",
    "VENDOR_POLICY",
    "Agent",
    "AllOptionalFailed",
    "ApiCheck",
    "Between",
    "Boot",
    "Checks",
    "Component",
    "ContainersCheck",
    "DockerCheck",
    "FailureCondition",
    "HealthPolicy",
    "ModelError",
    "NetworkCheck",
    "Phase",
    "PolicyFile",
    "Rollback",
    "Runtime",
    "Startup",
    "StorageCheck",
    "Thresholds",
    "TpmCheck",
    "load_policy",
    "safe_text",
    "split_host_port",
]
