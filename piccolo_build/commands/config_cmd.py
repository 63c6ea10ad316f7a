"""``piccolo-build config show|validate|schema`` (placeholder until the config module lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    config = typer.Typer(help="Show, validate and describe the build configuration.", no_args_is_help=True)
    app.add_typer(config, name="config")
