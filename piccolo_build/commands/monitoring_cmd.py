"""``piccolo-build monitoring [-o DIR]``: write the fleet's Prometheus alert rules and Grafana dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from piccolo_build.commands.config_cmd import ConfigOption, JsonOption, SetOption, load_for_cli
from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from piccolo_build.config import BuildConfig
    from piccolo_build.gentoo import OverlayFile

DEFAULT_OUTPUT = Path("monitoring")


def plan(cfg: BuildConfig) -> list[OverlayFile]:
    """The monitoring files for ``cfg``; without grafana-foundation-sdk, a user error saying so."""
    from piccolo_build.monitoring.dashboard import MissingSdk
    from piccolo_build.monitoring.render import monitoring_files

    try:
        return monitoring_files(cfg)
    except MissingSdk as exc:
        raise PiccoloError(str(exc), hint="python3 build.py check installs it with the linters") from None


def register(app: typer.Typer) -> None:
    @app.command("monitoring")
    def monitoring(
        config_file: ConfigOption = None,
        sets: SetOption = None,
        output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write.")] = DEFAULT_OUTPUT,
        as_json: JsonOption = False,
    ) -> None:
        """Write Prometheus alert rules and a Grafana dashboard for piccolod into DIR.

        Selector, thresholds and runbook URL come from the monitoring block of piccolo.yaml
        (docs/monitoring.md). DIR is replaced whole, so it must be new, empty or a previous render (it
        has a .piccolo-monitoring file).
        """
        from piccolo_build.monitoring.render import MARKER
        from piccolo_build.render import write_tree

        files = plan(load_for_cli(config_file, sets))
        try:
            changed = write_tree(files, output, MARKER)
        except OSError as exc:
            raise PiccoloError(f"cannot write {output}: {exc.strerror or exc}") from None
        names = [str(f.path) for f in files]
        if as_json:
            typer.echo(json.dumps({"output": str(output), "files": names, "changed": changed}))
        else:
            typer.echo(f"{output}: {', '.join(names)}, {'updated' if changed else 'unchanged'}")
