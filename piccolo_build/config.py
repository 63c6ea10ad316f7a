"""The builder's configuration: ``piccolo.yaml`` as a frozen, typed model.

Key names (the contract other tools and the docs rely on): ``version``, ``boards``,
``flatcar: {release, releases, sdk_version}``, ``update: {group, server}``,
``package: {category, name, license}``, ``release: {signing_key, update_key, output_dir}``,
``monitoring: {selector, runbook_url, dashboard_uid, dashboard_title, thresholds}`` (the fleet's alert
rules and dashboard, docs/monitoring.md), plus the
``health_policy`` and ``agent`` blocks of ``docs/agent.md``, validated by piccolod's own policy model.

Precedence: CLI flags (``overrides``: dotted key -> string) > ``PICCOLO_*`` environment (the dotted key
upper-cased with ``.`` as ``_``: ``PICCOLO_FLATCAR_RELEASE``, ``PICCOLO_BOARDS``) > file > built-in
defaults. An empty (or blank) string from the environment or a flag is an error naming the variable or
key, never null: an unset CI variable must not quietly drop the signing key; ``null`` says null.
Every error is a :class:`~piccolod.model.ModelError` ("file:line: key: message").

Values that end up in bash (ebuilds) or unit files are checked here, before anything is rendered:
Gentoo version and name syntax (PMS 3.1-3.2), licence tokens, URL and token character sets, and no
control characters, ``$(`` or backticks in any string of the whole file.
"""

from __future__ import annotations

import enum
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from piccolo_build import gentoo
from piccolo_build.monitoring import promql
from piccolo_build.releases import RELEASE_RE
from piccolod.model import (
    MAX_SCALAR,
    FieldError,
    KeyPath,
    ModelError,
    Source,
    build,
    dotted,
    leaves,
    load_file,
    merge,
    meta,
    parse_yaml,
    set_path,
)
from piccolod.policy import Agent, HealthPolicy, PolicyFile
from piccolod.values import between, distinct, safe_text

DEFAULT_CONFIG_FILE = "piccolo.yaml"
ENV_PREFIX = "PICCOLO_"

# Licences the Flatcar profile accepts (``ACCEPT_LICENSE="-* @FREE"``); anything else is shipped as
# ``licenses/<NAME>`` in the overlay and needs a ``package.license`` entry (docs/flatcar.md).
FREE_LICENSES = frozenset(
    {
        "Apache-2.0",
        "MIT",
        "BSD",
        "BSD-2",
        "ISC",
        "MPL-2.0",
        "GPL-2",
        "GPL-2+",
        "GPL-3",
        "GPL-3+",
        "LGPL-2.1",
        "LGPL-2.1+",
        "LGPL-3",
        "LGPL-3+",
        "Unlicense",
        "ZLIB",
        "PSF-2",
    }
)


class Board(enum.StrEnum):
    AMD64 = "amd64-usr"
    ARM64 = "arm64-usr"

    @property
    def arch(self) -> str:
        """The Gentoo keyword / SDK ``-a`` architecture of this board."""
        return self.value.removesuffix("-usr")


# --- value checks (PMS = Gentoo Package Manager Specification) -----------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SDK = re.compile(r"\d+\.\d+\.\d+([.+_-][A-Za-z0-9._+-]+)?")
# A subset of RFC 3986 that is inert when unquoted in a shell assignment: Flatcar's update.conf is both
# parsed by update_engine (no quoting) and sourced by shell scripts (motd), so no ; & ( ) ~ ? # ' " $ `.
_URL_CHARS = re.compile(r"[A-Za-z0-9._:/%@+,=-]+")
_KEY_ID = re.compile(r"[A-Za-z0-9@._+-]{1,128}")
_REL_PATH = re.compile(r"[A-Za-z0-9._/+-]+")
_KEY_PATH = re.compile(r"[A-Za-z0-9._/+@-]{1,4096}")
MAX_KEY_FILE = 64 * 1024  # a PEM public key is under 2 KiB
_STATE_DIR = re.compile(r"/var/lib/(?!\.\.?$)[A-Za-z0-9._-]+")  # one name; not . or ..
_DASHBOARD_UID = re.compile(r"[A-Za-z0-9_-]{1,40}")  # Grafana: a uid is at most 40 characters
MAX_ALERT_SECONDS = 30 * 86_400


def _full(pattern: re.Pattern[str], value: str, what: str) -> str:
    safe_text(value)
    if not pattern.fullmatch(value):
        raise ValueError(f"not a valid {what}: {value!r}")
    return value


def gentoo_version(value: str) -> str:
    return _full(gentoo.VERSION_RE, value, "Gentoo version (e.g. 0.1.0 or 1.2.3_rc1)")


def gentoo_category(value: str) -> str:
    return _full(gentoo.CATEGORY_RE, value, "Gentoo category name")


def gentoo_package(value: str) -> str:
    _full(gentoo.PACKAGE_RE, value, "Gentoo package name")
    if gentoo.name_ends_in_version(value):
        raise ValueError(f"a package name must not end in something that looks like a version: {value!r}")
    return value


def license_token(value: str) -> str:
    return _full(gentoo.LICENSE_RE, value, "licence name (one token, e.g. Apache-2.0)")


def token(value: str) -> str:
    return _full(_TOKEN, value, "name (letters, digits, '.', '_', '-')")


def flatcar_release(value: str) -> str:
    return _full(
        RELEASE_RE, value, "Flatcar release (lts, stable, beta, alpha, or a tag like stable-4593.2.5)"
    )


def sdk_version(value: str | None) -> str | None:
    return value if value is None else _full(_SDK, value, "SDK version (e.g. 4593.0.0)")


def update_url(value: str) -> str:
    _full(_URL_CHARS, value, "URL (letters, digits and . _ : / % @ + , = - only; no query or fragment)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value


def _not_an_option(value: str) -> str:
    """A value passed to a program as an argument must not read as one of its options."""
    if value.startswith("-"):
        raise ValueError(f"must not start with '-': {value!r}")
    return value


def signing_key(value: str | None) -> str | None:
    if value is None:
        return None
    return _not_an_option(_full(_KEY_ID, value, "GnuPG key (fingerprint, key id or e-mail)"))


def _releases(values: tuple[str, ...]) -> tuple[str, ...]:
    for i, value in enumerate(values):
        flatcar_release(value)
        if value in values[:i]:
            raise ValueError(f"'{value}' is listed twice")
    return values


def key_path(value: str | None) -> str | None:
    """A file path (absolute, or relative to the current directory); its content is checked by
    :meth:`BuildConfig.validate`."""
    if value is None:
        return None
    return _not_an_option(
        _full(_KEY_PATH, value, "file path (letters, digits, '.', '_', '+', '-', '/', '@')")
    )


def output_dir(value: str) -> str:
    _full(_REL_PATH, value, "directory (letters, digits, '.', '_', '+', '-', '/')")
    if ".." in value.split("/") or value.startswith("-"):
        raise ValueError(f"must not contain '..' or start with '-': {value!r}")
    return value


def label_selector(value: str) -> str:
    safe_text(value)
    return promql.selector(value)


def alert_duration(value: float) -> float:
    """Seconds that become a rule's ``for:`` or a window: 0-30 days, in whole milliseconds."""
    between(0, MAX_ALERT_SECONDS, "seconds")(value)
    promql.milliseconds(value)
    return value


def dashboard_uid(value: str) -> str:
    return _full(_DASHBOARD_UID, value, "Grafana dashboard uid (1-40 letters, digits, '_', '-')")


def title(value: str) -> str:
    safe_text(value)
    if not value.strip() or len(value) > 100:
        raise ValueError(f"must be 1-100 characters, got {len(value)}")
    return value


_BOARDS = distinct("must name at least one board")


# --- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flatcar:
    """Which Flatcar release the image is built on."""

    release: str = field(
        default="stable",
        metadata=meta(
            "a channel (lts, stable, beta, alpha: its newest tag) or a pinned <channel>-NNNN.N.N",
            check=flatcar_release,
        ),
    )
    releases: tuple[str, ...] = field(
        default=(),
        metadata=meta(
            "the releases CI builds, one build each (piccolo-build ci init); empty: just flatcar.release",
            check=_releases,
        ),
    )
    sdk_version: str | None = field(
        default=None, metadata=meta("SDK container version; null uses the release's own", check=sdk_version)
    )

    def build_releases(self) -> tuple[str, ...]:
        """The releases a CI run builds: ``releases``, or ``release`` alone."""
        return self.releases or (self.release,)


@dataclass(frozen=True)
class Update:
    """Where devices look for updates (update_engine's GROUP= and SERVER=)."""

    group: str = field(default="stable", metadata=meta("update group", check=token))
    server: str = field(
        default="https://updates.piccolo.space/v1/update/",
        metadata=meta("update server URL", check=update_url),
    )


@dataclass(frozen=True)
class Package:
    """The agent's package in the Flatcar overlay."""

    category: str = field(default="app-admin", metadata=meta("ebuild category", check=gentoo_category))
    name: str = field(default="piccolod", metadata=meta("ebuild package name", check=gentoo_package))
    license: str = field(default="Apache-2.0", metadata=meta("Gentoo licence name", check=license_token))

    @property
    def license_is_free(self) -> bool:
        return self.license in FREE_LICENSES


@dataclass(frozen=True)
class Release:
    """Signing and collecting the build's artefacts."""

    signing_key: str | None = field(
        default=None,
        metadata=meta("GnuPG key that signs artefacts; null leaves them unsigned", check=signing_key),
    )
    update_key: str | None = field(
        default=None,
        metadata=meta(
            "PEM file of the RSA public key update payloads are signed for; the image trusts it alone."
            " null: the image trusts Flatcar's development key (not for production)",
            check=key_path,
        ),
    )
    output_dir: str = field(
        default="release", metadata=meta("where artefacts are collected", check=output_dir)
    )


def _seconds(default: float, help: str) -> Any:
    return field(default=default, metadata=meta(f"{help} (0-30 days, seconds)", check=alert_duration))


@dataclass(frozen=True)
class AlertThresholds:
    """How long each condition must hold before its alert fires (docs/monitoring.md lists the alerts)."""

    down_for_seconds: float = _seconds(300.0, "piccolod down (up == 0) or absent before PiccolodDown/Absent")
    unhealthy_for_seconds: float = _seconds(600.0, "a machine unhealthy before PiccolodUnhealthy")
    component_failing_for_seconds: float = _seconds(
        900, "a component failing before PiccolodComponentFailing"
    )
    rollback_alert_seconds: float = _seconds(3600.0, "how long PiccolodRolledBack fires after a rollback")
    gate_overdue_for_seconds: float = _seconds(
        300, "a gate pending past its deadline before PiccolodGateOverdue"
    )
    stale_intervals: float = field(
        default=3.0,
        metadata=meta(
            "assessments are stale when older than this many check intervals (1-100)", check=between(1, 100)
        ),
    )
    stale_for_seconds: float = _seconds(300.0, "assessments stale before PiccolodAssessmentsStale")
    pinned_for_seconds: float = _seconds(3600.0, "an update pinned before PiccolodUpdatePinned")
    version_skew_for_seconds: float = _seconds(
        86400, "an update group on two versions before PiccolodVersionSkew"
    )


@dataclass(frozen=True)
class Monitoring:
    """The fleet's Prometheus alert rules and Grafana dashboard (``piccolo-build monitoring``)."""

    selector: str = field(
        default='job="piccolod"',
        metadata=meta("label matchers that select the piccolod scrape targets", check=label_selector),
    )
    runbook_url: str = field(
        default="https://piccolo.space/docs/monitoring",
        metadata=meta(
            "where docs/monitoring.md is published; each alert links to its #anchor", check=update_url
        ),
    )
    dashboard_uid: str = field(
        default="piccolod-fleet", metadata=meta("Grafana dashboard uid", check=dashboard_uid)
    )
    dashboard_title: str = field(
        default="Piccolo OS fleet", metadata=meta("Grafana dashboard title", check=title)
    )
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)


@dataclass(frozen=True)
class BuildConfig:
    """A Piccolo OS build: piccolo.yaml."""

    version: str = field(default="0.1.0", metadata=meta("Piccolo OS / agent version", check=gentoo_version))
    boards: tuple[Board, ...] = field(default=(Board.AMD64,), metadata=meta("boards to build", check=_BOARDS))
    flatcar: Flatcar = field(default_factory=Flatcar)
    update: Update = field(default_factory=Update)
    package: Package = field(default_factory=Package)
    release: Release = field(default_factory=Release)
    monitoring: Monitoring = field(default_factory=Monitoring)
    health_policy: HealthPolicy = field(default_factory=HealthPolicy)
    agent: Agent = field(default_factory=Agent)

    def policy(self) -> PolicyFile:
        """The piccolod policy file this build bakes into the image."""
        return PolicyFile(health_policy=self.health_policy, agent=self.agent)

    def validate(self) -> None:
        if not _STATE_DIR.fullmatch(self.agent.state_dir):
            raise FieldError(
                ("agent", "state_dir"),
                "must be /var/lib/<name> (letters, digits, '.', '_', '-'): the unit's StateDirectory= and"
                f" the tmpfiles entry are made from it, got {self.agent.state_dir!r}",
            )
        if self.release.update_key is not None:
            update_key_pem(self.release.update_key)
        if self.agent.boot.usr_device != "auto":
            raise FieldError(
                ("agent", "boot", "usr_device"),
                "must be auto in an image: device: and image: stand in for the /usr mount in tests only",
            )
        for path, value in _strings(self, ()):
            if "$(" in value or "`" in value or "${" in value:
                raise FieldError(path, "must not contain '$(', '${' or backticks")
            try:
                safe_text(value)
            except ValueError as exc:
                raise FieldError(path, str(exc)) from None


def update_key_pem(path: str) -> bytes:
    """``release.update_key``'s public key as the image carries it (PEM SubjectPublicKeyInfo, the form
    update_engine reads); a :class:`FieldError` when the file is missing or not such a key."""
    from piccolo_build import payload
    from piccolod.model import read_bounded

    where = ("release", "update_key")
    try:
        data = read_bounded(Path(path), MAX_KEY_FILE)
    except ModelError as exc:
        raise FieldError(where, f"{path}: {exc.message}") from None
    try:
        return payload.public_pem(payload.parse_public_key(data, path))
    except ValueError as exc:
        raise FieldError(where, str(exc)) from None


def _strings(obj: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(obj, str):
        yield path, str(obj)
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            # The keys of the operator's own (the policy's checks) sit beside the fields, as in the file.
            yield from _strings(getattr(obj, f.name), path if f.metadata.get("extra") else (*path, f.name))
    elif isinstance(obj, tuple):
        for i, item in enumerate(obj):
            yield from _strings(item, (*path, i))
    elif isinstance(obj, Mapping):  # the policy's checks of the operator's own
        for key, item in obj.items():
            yield from _strings(item, (*path, str(key)))


# --- loading with precedence ---------------------------------------------------------------------


def env_name(path: KeyPath) -> str:
    """``flatcar.release`` -> ``PICCOLO_FLATCAR_RELEASE``."""
    return ENV_PREFIX + "_".join(str(p) for p in path).upper()


def _leaf_types() -> dict[str, tuple[KeyPath, Any]]:
    return {dotted(path): (path, tp) for path, tp, _ in leaves(BuildConfig)}


def _from_string(tp: Any, text: str, src: Source, path: KeyPath) -> Any:
    """A flag or environment string as the plain value the model expects for type ``tp``."""
    args = typing.get_args(tp)
    if type(None) in args and text in ("null", "none"):
        return None
    if typing.get_origin(tp) is tuple:
        if text.lstrip().startswith("["):
            return _yaml_scalar(text, src, path)
        return [_from_string(args[0], part.strip(), src, path) for part in text.split(",") if part.strip()]
    inner = [a for a in args if a is not type(None)] if args else [tp]
    if str in inner or any(isinstance(a, type) and issubclass(a, enum.Enum) for a in inner):
        return text
    return _yaml_scalar(text, src, path)


def _yaml_scalar(text: str, src: Source, path: KeyPath) -> Any:
    """A flag or environment value written in YAML (``45``, ``false``, ``[a, b]``): the same subset
    and limits as a file."""
    try:
        return parse_yaml(text, src.file)[0]
    except ModelError as exc:
        raise src.error(path, f"cannot parse {text!r}: {exc.message}") from None


def _layer(values: Mapping[str, str], origin: str, names: Mapping[str, str]) -> tuple[dict[str, Any], Source]:
    """Turn {dotted key: string} into nested plain data with a Source blaming ``origin``."""
    types = _leaf_types()
    data: dict[str, Any] = {}
    src = Source(origin)
    for key in sorted(values):
        where = f"{origin} {names[key]}" if key in names else origin
        if key not in types:
            raise ModelError(where, None, key, "unknown key (see: piccolo-build config show)")
        path, tp = types[key]
        if not values[key].strip():
            # An unset CI variable expands to "": never let it quietly mean null (an unsigned release).
            raise ModelError(where, None, key, "empty value; give a value, or 'null' where null is allowed")
        if len(values[key]) > MAX_SCALAR:
            raise ModelError(where, None, key, f"a value longer than {MAX_SCALAR} characters")
        value = _from_string(tp, values[key], Source(where), path)
        src.lines[path] = (where, 0)
        if isinstance(value, list):
            src.lines.update({(*path, i): (where, 0) for i in range(len(value))})
        set_path(data, path, value)
    return data, src


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> BuildConfig:
    """Load ``path`` (or only defaults when None), then ``PICCOLO_*`` from ``env``, then ``overrides``.

    ``env`` defaults to nothing (pass ``os.environ`` explicitly); ``PICCOLO_*`` names that are not keys
    are ignored. An unknown key in ``overrides`` is an error. Raises :class:`ModelError`.
    """
    data: Any = {}
    src = Source(str(path) if path else "<defaults>")
    if path is not None:
        data, src = load_file(path)
        if not isinstance(data, dict):
            raise ModelError(str(path), 1, "", "expected a mapping of keys at the top level")
    by_env = {env_name(p): key for key, (p, _) in _leaf_types().items()}
    env_values = {by_env[k]: v for k, v in (env or {}).items() if k in by_env}
    for values, origin, names in (
        (env_values, "environment", {key: "$" + name for name, key in by_env.items()}),
        (dict(overrides or {}), "command line", {}),
    ):
        if values:
            layer, layer_src = _layer(values, origin, names)
            data = merge(data, layer, src, layer_src)
    return build(BuildConfig, data, src)


__all__ = [
    "DEFAULT_CONFIG_FILE",
    "FREE_LICENSES",
    "AlertThresholds",
    "Board",
    "BuildConfig",
    "Flatcar",
    "ModelError",
    "Monitoring",
    "Package",
    "Release",
    "Update",
    "env_name",
    "load_config",
    "update_key_pem",
]
