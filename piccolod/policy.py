"""The health policy: what piccolod checks, how strictly, and what it does when checks fail.

The file format extends the seed's ``health_policy`` block (see ``docs/agent.md``, whose key names are the
contract). Vendor default ``/usr/lib/piccolod/health-policy.yaml``; the administrator's
``/etc/piccolod/health-policy.yaml`` overrides it key by key; ``--config FILE`` uses exactly one file.
The builder imports this module to validate the policy it bakes into the image.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piccolod import http_client
from piccolod.model import FieldError, MissingFile, ModelError, Source, build, load_file, merge, meta

VENDOR_POLICY = Path("/usr/lib/piccolod/health-policy.yaml")
ADMIN_POLICY = Path("/etc/piccolod/health-policy.yaml")


class Component(enum.StrEnum):
    DOCKER = "docker"
    CONTAINERS = "containers"
    TPM = "tpm"
    STORAGE = "storage"
    NETWORK = "network"
    API = "api"


class FailureCondition(enum.StrEnum):
    CRITICAL_COMPONENT_FAILURE = "critical_component_failure"
    STARTUP_TIMEOUT = "startup_timeout"
    API_UNRESPONSIVE_300S = "api_unresponsive_300s"


class AllOptionalFailed(enum.StrEnum):
    """The status when every optional component fails (and every required one passes)."""

    UNHEALTHY = "unhealthy"
    DEGRADED = "degraded"


# --- value checks (shared with the builder, which renders these values into units and YAML) -----


def _finite(value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")


@dataclass(frozen=True)
class Between:
    """A check for a number the agent can use: finite and within ``[low, high]``.

    Every duration and count of the policy has such a range (docs/agent.md lists them): a value outside
    it would validate and then fail later, in a socket timeout, a thread wait or a unit file.
    """

    low: float
    high: float
    unit: str = ""

    def __call__(self, value: float) -> float:
        _finite(value)
        if not self.low <= value <= self.high:
            suffix = f" {self.unit}" if self.unit else ""
            raise ValueError(f"must be between {self.low:g} and {self.high:g}{suffix}, got {value:g}")
        return value


def between(low: float, high: float, unit: str = "") -> Between:
    return Between(low, high, unit)


def safe_text(value: str) -> str:
    """Reject text that cannot travel safely through a unit file, a shell or a log line."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters (newline, tab, ...)")
    return value


def absolute_path(value: str) -> str:
    safe_text(value)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"must not contain '..', got {value!r}")
    return value


def state_dir(value: str) -> str:
    """An absolute directory the agent may own: never the root directory itself."""
    absolute_path(value)
    if not value.strip("/"):
        raise ValueError(f"must be a directory of its own, not the root directory, got {value!r}")
    return value


def host_port(value: str) -> str:
    """``host:port`` or ``[v6]:port``; returns it unchanged. Used for targets and the listen address."""
    split_host_port(value)
    return value


def split_host_port(value: str) -> tuple[str, int]:
    safe_text(value)
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [address]:port, got {value!r}")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"expected host:port, got {value!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1-65535, got {port!r} in {value!r}")
    if any(c.isspace() for c in host) or host.startswith("-"):
        raise ValueError(f"bad host name {host!r}")
    return host, int(port)


def hostname(value: str) -> str:
    safe_text(value)
    if (
        not value
        or len(value) > 253
        or not all(part and len(part) <= 63 for part in value.rstrip(".").split("."))
    ):
        raise ValueError(f"not a valid DNS name: {value!r}")
    if not all(c.isalnum() or c in "-._" for c in value):
        raise ValueError(f"not a valid DNS name: {value!r}")
    return value


TCTI_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def tcti_string(value: str) -> str:
    """A TCTI in tpm2-tools form, ``name[:config]``: a module name such as ``device``, ``swtpm``, ``mssim``
    or ``tabrmd`` (or a library file name), and its configuration; ``device`` takes an absolute path."""
    safe_text(value)
    name, _, config = value.partition(":")
    if not TCTI_NAME.fullmatch(name):
        raise ValueError(
            f"must be a TCTI as name:config (device:/dev/tpmrm0, swtpm:path=/run/swtpm.sock), got {value!r}"
        )
    if name == "device" and config and not config.startswith("/"):
        raise ValueError(f"the device TCTI takes an absolute path (device:/dev/tpmrm0), got {value!r}")
    return value


def docker_endpoint(value: str | None) -> str | None:
    """``unix:///absolute/path`` or ``tcp://host:port`` (the endpoints the checks speak), or null."""
    if value is None:
        return None
    safe_text(value)
    http_client.endpoint(value)  # ValueError names what is wrong
    return value


def _each(check: Any) -> Any:
    def run(values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(check(v) for v in values)

    return run


def _argv(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise ValueError("must name a command")
    return tuple(safe_text(v) for v in values)


# --- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Startup:
    """The gate on the first boot of a freshly updated /usr slot."""

    timeout_seconds: float = field(
        default=120.0, metadata=meta("startup deadline (0.1-3600 s)", check=between(0.1, 3600, "seconds"))
    )
    required_components: tuple[Component, ...] = field(
        default=(Component.TPM, Component.STORAGE, Component.API),
        metadata=meta("components that must pass for the slot to be marked good"),
    )
    optional_components: tuple[Component, ...] = field(
        default=(Component.DOCKER, Component.NETWORK),
        metadata=meta("components that are checked and reported but only degrade the status"),
    )
    optional_all_failed: AllOptionalFailed = field(
        default=AllOptionalFailed.UNHEALTHY,
        metadata=meta("the status when every optional component fails: unhealthy or degraded"),
    )

    def validate(self) -> None:
        for name in ("required_components", "optional_components"):
            items: tuple[Component, ...] = getattr(self, name)
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
        default=("systemctl", "reboot"), metadata=meta("argv run once to reboot", check=_argv)
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
class DockerCheck:
    host: str | None = field(
        default="unix:///var/run/docker.sock",
        metadata=meta(
            "Docker endpoint, unix:///path or tcp://host:port; null uses DOCKER_HOST", check=docker_endpoint
        ),
    )


@dataclass(frozen=True)
class TpmCheck:
    tcti: str = field(default="device:/dev/tpmrm0", metadata=meta("TCTI name:config", check=tcti_string))


@dataclass(frozen=True)
class StorageCheck:
    mounts: tuple[str, ...] = field(
        default=("/", "/var"), metadata=meta("mount points", check=_each(absolute_path))
    )


@dataclass(frozen=True)
class NetworkCheck:
    targets: tuple[str, ...] = field(
        default=("8.8.8.8:53", "piccolo.space:443"),
        metadata=meta("host:port TCP targets", check=_each(host_port)),
    )
    dns_names: tuple[str, ...] = field(
        default=("piccolo.space",), metadata=meta("names that must resolve", check=_each(hostname))
    )


@dataclass(frozen=True)
class Checks:
    docker: DockerCheck = field(default_factory=DockerCheck)
    tpm: TpmCheck = field(default_factory=TpmCheck)
    storage: StorageCheck = field(default_factory=StorageCheck)
    network: NetworkCheck = field(default_factory=NetworkCheck)


@dataclass(frozen=True)
class HealthPolicy:
    startup: Startup = field(default_factory=Startup)
    runtime: Runtime = field(default_factory=Runtime)
    rollback: Rollback = field(default_factory=Rollback)
    thresholds: Thresholds = field(default_factory=Thresholds)
    checks: Checks = field(default_factory=Checks)

    def checked(self) -> tuple[Component, ...]:
        """Components checked, in a stable order: listed ones, plus containers whenever docker is."""
        listed = set(self.startup.required_components) | set(self.startup.optional_components)
        if Component.DOCKER in listed:
            listed.add(Component.CONTAINERS)
        return tuple(c for c in Component if c in listed)

    def required(self, comp: Component) -> bool:
        """Whether a failure of ``comp`` makes the machine unhealthy (containers follow docker)."""
        req = self.startup.required_components
        if comp is Component.CONTAINERS and comp not in self.startup.optional_components:
            return comp in req or Component.DOCKER in req
        return comp in req


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
    config: Path | None = None, *, vendor: Path = VENDOR_POLICY, admin: Path = ADMIN_POLICY
) -> PolicyFile:
    """Load ``config`` alone, or the vendor file overlaid key by key with the admin file if present.

    Missing vendor and admin files give the built-in defaults. Every other problem, whatever the file
    holds, is a :class:`ModelError` (one line), so the daemon can always fall back.
    """
    if config is not None:
        one, one_src = load_file(config)
        return build(PolicyFile, one, one_src)
    data: Any = {}
    src = Source(str(vendor))
    for path in (vendor, admin):
        try:
            more, more_src = load_file(path)
        except MissingFile:
            continue
        data = merge(data, more, src, more_src)
    return build(PolicyFile, data, src)


__all__ = [
    "ADMIN_POLICY",
    "VENDOR_POLICY",
    "Agent",
    "AllOptionalFailed",
    "Boot",
    "Checks",
    "Component",
    "FailureCondition",
    "HealthPolicy",
    "ModelError",
    "PolicyFile",
    "Rollback",
    "Runtime",
    "Startup",
    "Thresholds",
    "load_policy",
    "split_host_port",
]
