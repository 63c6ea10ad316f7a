"""``piccolo-build config show|validate|schema``, and the config options every command shares.

:func:`load_for_cli` is how a command turns ``--config FILE`` and ``--set KEY=VALUE`` into a
:class:`~piccolo_build.config.BuildConfig`, with the precedence flags > ``PICCOLO_*`` > file > defaults.
Without ``--config`` it reads ``./piccolo.yaml`` if there is one, else uses the defaults.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from piccolo_build.config import BuildConfig

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Build configuration file (default: ./piccolo.yaml if present).",
        dir_okay=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override one key, e.g. --set flatcar.release=stable-4593.2.5 (repeatable)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def parse_sets(sets: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in sets or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PiccoloError(f"--set {item!r}: expected KEY=VALUE", hint="e.g. --set update.group=beta")
        out[key.strip()] = value
    return out


def config_path(config: Path | None) -> Path | None:
    from piccolo_build.config import DEFAULT_CONFIG_FILE

    if config is not None:
        return config
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_for_cli(config: Path | None, sets: Sequence[str] | None = None) -> BuildConfig:
    """Load the configuration for a command; a bad value is a one-line :class:`PiccoloError`."""
    from piccolo_build.config import load_config
    from piccolod.model import ModelError

    overrides = parse_sets(sets)
    try:
        return load_config(config_path(config), env=os.environ, overrides=overrides)
    except ModelError as exc:
        raise PiccoloError(
            str(exc), hint="see `piccolo-build config schema` for the keys and their types"
        ) from None


def register(app: typer.Typer) -> None:
    from piccolo_build.cli import command_group

    config = command_group(app, "config", "Show, validate and describe the build configuration.")

    @config.command("show")
    def show(config_file: ConfigOption = None, sets: SetOption = None, as_json: JsonOption = False) -> None:
        """Print the effective configuration (file, environment and flags applied)."""
        import yaml

        from piccolod.model import to_plain

        plain = to_plain(load_for_cli(config_file, sets))
        if as_json:
            typer.echo(json.dumps(plain, indent=2))
        else:
            typer.echo(yaml.safe_dump(plain, sort_keys=False, default_flow_style=False).rstrip("\n"))

    @config.command("validate")
    def validate(
        file: Annotated[
            Path, typer.Argument(help="Configuration file to check.", dir_okay=False, metavar="FILE")
        ],
        as_json: JsonOption = False,
    ) -> None:
        """Check a configuration file (without environment or flags); exit 2 with file:line: key on error."""
        from piccolo_build.config import load_config
        from piccolo_build.overlay import service_times
        from piccolod.model import ModelError

        try:
            cfg = load_config(file)
            service_times(cfg)
        except (ModelError, ValueError) as exc:
            raise PiccoloError(str(exc), hint="see `piccolo-build config schema`") from None
        if as_json:
            typer.echo(json.dumps({"file": str(file), "valid": True}))
        else:
            typer.echo(f"{file}: valid")

    @config.command("schema")
    def schema() -> None:
        """Print the JSON Schema of piccolo.yaml."""
        from piccolo_build.config import BuildConfig
        from piccolod.model import json_schema

        typer.echo(json.dumps(json_schema(BuildConfig, "piccolo.yaml"), indent=2))
