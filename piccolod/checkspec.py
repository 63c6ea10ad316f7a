"""The checks a policy declares: their names, the options every check takes, the built-in checks'
settings and the kinds of check an operator writes.

``health_policy.checks`` has one entry per check. Six names are built in (:class:`Component`), each with
settings of its own (``checks.tpm.tcti``...); every other key is a check of the operator's own, whose
``kind`` says what it runs (:class:`Kind`): a program (``exec``), a systemd unit (``systemd_unit``), an
HTTP answer (``http``), a TCP port (``tcp``), a Docker container (``container``) or a DNS name
(``dns``). Either way a check is run only when ``startup.required_components`` or
``optional_components`` names it (or it comes from a ``required.d``/``wanted.d`` directory), exactly as
the built-ins always were; a declared check that is not named is *disabled*, and shown as such.

Every entry takes the same options, named like Kubernetes probes (:class:`Options`); each is null by
default, meaning the policy-wide value it falls back to (:meth:`Options.effective`). The kinds'
settings are validated here, before anything runs: ``exec`` takes an absolute path and no shell,
``http`` a plain ``http://`` URL, ``systemd_unit`` a unit name systemctl cannot read as an option.
docs/agent.md lists every key with its range.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from piccolod.model import FieldError, meta
from piccolod.values import (
    absolute_path,
    between,
    distinct,
    docker_endpoint,
    each,
    host_port,
    hostname,
    optional,
    safe_text,
    tcti_string,
)


class Component(enum.StrEnum):
    """The built-in checks (their names are reserved)."""

    DOCKER = "docker"
    CONTAINERS = "containers"
    TPM = "tpm"
    STORAGE = "storage"
    NETWORK = "network"
    API = "api"


class Kind(enum.StrEnum):
    """The kinds of check an operator declares."""

    EXEC = "exec"
    SYSTEMD_UNIT = "systemd_unit"
    HTTP = "http"
    TCP = "tcp"
    CONTAINER = "container"
    DNS = "dns"


class Phase(enum.StrEnum):
    """Where a check runs: the first-boot gate, the runtime loop (``piccolod check`` is runtime)."""

    GATE = "gate"
    RUNTIME = "runtime"


BUILT_IN = frozenset(c.value for c in Component)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED = frozenset({"piccolod"})  # the agent's own entry in the health document


def check_name(value: str) -> str:
    """A check's name: the built-ins' as :class:`Component` members, any other as it is written.

    Names are metric label values, log fields, keys of the health document and file names in the
    drop-in directories: letters, digits, ``.``, ``_`` and ``-``, at most 64, not starting with a dot
    or a dash.
    """
    safe_text(value)
    if not NAME.fullmatch(value):
        raise ValueError(
            "not a check name (letters, digits, '.', '_', '-'; at most 64; first a letter or digit): "
            f"{value!r}"
        )
    if value in RESERVED:
        raise ValueError(f"{value!r} is the agent's own name, not a check")
    return Component(value) if value in BUILT_IN else value


_RUN_ON = distinct("must name gate, runtime or both (to stop a check, set enabled: false)")


def option(help: str, *, check: Any = None) -> dict[str, Any]:
    return meta(help, check=check, omit_default=True)


@dataclass(frozen=True, kw_only=True)
class Effective:
    """A check's options with every null replaced by what it falls back to."""

    enabled: bool
    timeout_seconds: float
    interval_seconds: float
    failure_threshold: int
    success_threshold: int
    start_period_seconds: float
    run_on: tuple[Phase, ...]


@dataclass(frozen=True, kw_only=True)
class Options:
    """What every check takes, built-in or not. Null: the policy-wide value (see :meth:`effective`)."""

    enabled: bool = field(default=True, metadata=option("false: declared and shown as disabled, never run"))
    timeout_seconds: float | None = field(
        default=None,
        metadata=option(
            "deadline of one run (0.05-3600 s); null: thresholds.tpm_operation_timeout_seconds for tpm, "
            "thresholds.network_timeout_seconds for every other check",
            check=optional(between(0.05, 3600, "seconds")),
        ),
    )
    interval_seconds: float | None = field(
        default=None,
        metadata=option(
            "seconds between two runs at runtime (0.05-86400); null: runtime.check_interval_seconds",
            check=optional(between(0.05, 86400, "seconds")),
        ),
    )
    failure_threshold: int | None = field(
        default=None,
        metadata=option(
            "consecutive failures before it counts as failed at runtime (1-1000); null: "
            "runtime.failure_threshold",
            check=optional(between(1, 1000)),
        ),
    )
    success_threshold: int | None = field(
        default=None,
        metadata=option(
            "consecutive passes before a check that counts as failed counts as healthy again at runtime "
            "(1-1000); null: 1",
            check=optional(between(1, 1000)),
        ),
    )
    start_period_seconds: float | None = field(
        default=None,
        metadata=option(
            "seconds after the agent starts during which a check that has not passed yet is not held "
            "against the machine (0-86400); null: 0",
            check=optional(between(0, 86400, "seconds")),
        ),
    )
    run_on: tuple[Phase, ...] | None = field(
        default=None,
        metadata=option("where it runs: gate, runtime or both; null: both", check=optional(_RUN_ON)),
    )

    def effective(self, *, timeout: float, interval: float, failure_threshold: int) -> Effective:
        """The options with the policy-wide values for the nulls."""
        return Effective(
            enabled=self.enabled,
            timeout_seconds=timeout if self.timeout_seconds is None else self.timeout_seconds,
            interval_seconds=interval if self.interval_seconds is None else self.interval_seconds,
            failure_threshold=(
                failure_threshold if self.failure_threshold is None else self.failure_threshold
            ),
            success_threshold=1 if self.success_threshold is None else self.success_threshold,
            start_period_seconds=self.start_period_seconds or 0.0,
            run_on=self.run_on or (Phase.GATE, Phase.RUNTIME),
        )

    @property
    def explicit_timing(self) -> bool:
        """Whether the check sets its own timeout or interval (then the timeout must be below it)."""
        return self.timeout_seconds is not None or self.interval_seconds is not None


# --- the built-in checks' settings -------------------------------------------------------------------


@dataclass(frozen=True)
class DockerCheck(Options):
    host: str | None = field(
        default="unix:///var/run/docker.sock",
        metadata=meta(
            "Docker endpoint, unix:///path or tcp://host:port; null uses DOCKER_HOST", check=docker_endpoint
        ),
    )


@dataclass(frozen=True)
class ContainersCheck(Options):
    """The running containers' health (follows docker unless listed itself)."""


@dataclass(frozen=True)
class TpmCheck(Options):
    tcti: str = field(default="device:/dev/tpmrm0", metadata=meta("TCTI name:config", check=tcti_string))


@dataclass(frozen=True)
class StorageCheck(Options):
    mounts: tuple[str, ...] = field(
        default=("/", "/var"), metadata=meta("mount points", check=each(absolute_path))
    )


@dataclass(frozen=True)
class NetworkCheck(Options):
    targets: tuple[str, ...] = field(
        default=("8.8.8.8:53", "piccolo.space:443"),
        metadata=meta("host:port TCP targets", check=each(host_port)),
    )
    dns_names: tuple[str, ...] = field(
        default=("piccolo.space",), metadata=meta("names that must resolve", check=each(hostname))
    )


@dataclass(frozen=True)
class ApiCheck(Options):
    """The agent's own HTTP API answers (agent.listen)."""


# --- the kinds -------------------------------------------------------------------------------------

UNIT_TYPES = (
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
)
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,250}\.(" + "|".join(UNIT_TYPES) + ")")
_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_RESTARTS = 1_000_000


def command(values: tuple[str, ...]) -> tuple[str, ...]:
    """An argument list whose program is an absolute path (no shell, no search of PATH)."""
    if not values:
        raise ValueError("must name a program: [/absolute/path, arguments...]")
    for value in values:
        safe_text(value)
    if not values[0].startswith("/"):
        raise ValueError(
            f"the program must be an absolute path (no shell, no PATH search), got {values[0]!r}"
        )
    absolute_path(values[0])
    return values


def unit_name(value: str) -> str:
    safe_text(value)
    if value.startswith("-") or not _UNIT.fullmatch(value):
        raise ValueError(f"not a unit name (name.service, name.socket, name@instance.service...): {value!r}")
    return value


def http_url(value: str) -> str:
    """``http://host[:port]/path``: plain HTTP, as the agent speaks it (no TLS: see docs/agent.md)."""
    from urllib.parse import urlsplit

    safe_text(value)
    if value.startswith("https://"):
        raise ValueError("https is not spoken by the agent (no TLS stack on the device): use http://")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc}): {value!r}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected http://host[:port]/path, got {value!r}")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL would be shown in the API and the logs: not accepted")
    if parts.fragment or any(c.isspace() or ord(c) > 0x7E for c in value):
        raise ValueError(f"expected an ASCII URL without spaces or a fragment, got {value!r}")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    return value


def container_name(value: str) -> str:
    safe_text(value)
    if not _CONTAINER.fullmatch(value):
        raise ValueError(f"not a container name or id: {value!r}")
    return value


def _scalar(value: Any) -> Any:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError("must be a string, number, true, false or null")
    return value


def json_path(value: str) -> str:
    safe_text(value)
    if not value or any(not part for part in value.split(".")):
        raise ValueError(
            f"expected a dotted path into the answer (status, checks.db, items.0.state): {value!r}"
        )
    return value


@dataclass(frozen=True)
class JsonMatch:
    """A field of the JSON answer and the value it must have."""

    equals: Any = field(
        metadata=meta("the value the field must have (a string, number, boolean or null)", check=_scalar)
    )
    field: str = field(
        metadata=meta("dotted path into the answer: status, checks.db, items.0.state", check=json_path)
    )


@dataclass(frozen=True, kw_only=True)
class ExecCheck(Options):
    """A program: exit 0 passes, 1 fails, 2 (or anything else) is unknown."""

    kind: str = field(default=Kind.EXEC.value, metadata=meta("exec"))
    command: tuple[str, ...] = field(
        metadata=meta("argv, run without a shell: [/absolute/path, arguments...]", check=command)
    )


@dataclass(frozen=True, kw_only=True)
class SystemdUnitCheck(Options):
    """A unit is active (not failed, not inactive), and restarted at most ``max_restarts`` times."""

    kind: str = field(default=Kind.SYSTEMD_UNIT.value, metadata=meta("systemd_unit"))
    unit: str = field(metadata=meta("the unit: name.service, name.socket...", check=unit_name))
    max_restarts: int | None = field(
        default=None,
        metadata=meta(
            "fail when systemd restarted it more often (0-1e6); null: not checked",
            check=optional(between(0, MAX_RESTARTS)),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class HttpCheck(Options):
    """``GET url`` answers ``status``, and optionally a JSON field has a value."""

    kind: str = field(default=Kind.HTTP.value, metadata=meta("http"))
    url: str = field(metadata=meta("http://host[:port]/path", check=http_url))
    status: int = field(
        default=200, metadata=meta("the HTTP status it must answer (100-599)", check=between(100, 599))
    )
    json: JsonMatch | None = field(
        default=None, metadata=meta("{field: a.b, equals: value}; null: not checked")
    )


@dataclass(frozen=True, kw_only=True)
class TcpCheck(Options):
    """A TCP connection to ``address`` is accepted (nothing is sent)."""

    kind: str = field(default=Kind.TCP.value, metadata=meta("tcp"))
    address: str = field(metadata=meta("host:port or [v6]:port", check=host_port))


@dataclass(frozen=True, kw_only=True)
class ContainerCheck(Options):
    """A Docker container runs, is healthy when it has a HEALTHCHECK, and restarted at most N times."""

    kind: str = field(default=Kind.CONTAINER.value, metadata=meta("container"))
    name: str = field(metadata=meta("container name or id", check=container_name))
    max_restarts: int | None = field(
        default=None,
        metadata=meta(
            "fail when the engine restarted it more often (0-1e6); null: not checked",
            check=optional(between(0, MAX_RESTARTS)),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class DnsCheck(Options):
    """``name`` resolves to at least one address through the system resolver."""

    kind: str = field(default=Kind.DNS.value, metadata=meta("dns"))
    name: str = field(metadata=meta("the DNS name", check=hostname))


CustomCheck = ExecCheck | SystemdUnitCheck | HttpCheck | TcpCheck | ContainerCheck | DnsCheck
BuiltIn = DockerCheck | ContainersCheck | TpmCheck | StorageCheck | NetworkCheck | ApiCheck
AnyCheck = BuiltIn | CustomCheck


@dataclass(frozen=True)
class Checks:
    """The settings of the built-in checks, and the checks of the operator's own (any other key)."""

    docker: DockerCheck = field(default_factory=DockerCheck)
    tpm: TpmCheck = field(default_factory=TpmCheck)
    storage: StorageCheck = field(default_factory=StorageCheck)
    network: NetworkCheck = field(default_factory=NetworkCheck)
    containers: ContainersCheck = field(default_factory=ContainersCheck)
    api: ApiCheck = field(default_factory=ApiCheck)
    custom: dict[str, CustomCheck] = field(
        default_factory=dict,
        metadata=meta(
            "a check of your own per key: name -> {kind: exec|systemd_unit|http|tcp|container|dns, ...}",
            extra=True,
        ),
    )

    def validate(self) -> None:
        for name in self.custom:
            try:
                check_name(name)
            except ValueError as exc:
                raise FieldError((name,), str(exc)) from None

    def names(self) -> tuple[str, ...]:
        """Every declared check: the built-ins in their order, then the operator's, by name."""
        return (*Component, *sorted(self.custom))

    def spec(self, name: str) -> AnyCheck | None:
        """The settings of check ``name`` (None: no such check)."""
        if name in BUILT_IN:
            found: AnyCheck = getattr(self, str(name))
            return found
        return self.custom.get(name)

    def kind(self, name: str) -> str:
        """``exec``, ``http``...; a built-in check's kind is its own name."""
        spec = self.spec(name)
        return str(name) if spec is None or isinstance(spec, BuiltIn) else spec.kind


__all__ = [
    "AnyCheck",
    "ApiCheck",
    "BuiltIn",
    "Checks",
    "Component",
    "ContainerCheck",
    "ContainersCheck",
    "CustomCheck",
    "DnsCheck",
    "DockerCheck",
    "Effective",
    "ExecCheck",
    "HttpCheck",
    "JsonMatch",
    "Kind",
    "NetworkCheck",
    "Options",
    "Phase",
    "StorageCheck",
    "SystemdUnitCheck",
    "TcpCheck",
    "TpmCheck",
    "check_name",
]
