"""``piccolo-build stage DIR``: the base-image files and the piccolod sysext tree, as the ebuilds install
them (:mod:`piccolo_build.stage`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from piccolo_build.commands.config_cmd import ConfigOption, JsonOption, SetOption, load_for_cli
from piccolo_build.errors import PiccoloError


def _env(values: list[str] | None) -> dict[str, str]:
    env = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise PiccoloError(
                f"--env {item!r}: expected NAME=VALUE", hint="e.g. --env LD_LIBRARY_PATH=/opt/lib"
            )
        env[key] = value
    return env


def register(app: typer.Typer) -> None:
    @app.command("stage")
    def stage_command(  # noqa: PLR0917 - Typer passes every option by keyword
        output: Annotated[Path, typer.Argument(help="Directory to write (base/, sysext/).")],
        config_file: ConfigOption = None,
        sets: SetOption = None,
        python: Annotated[
            str, typer.Option("--python", help="Interpreter the staged /usr/bin/piccolod runs.")
        ] = sys.executable,
        pythonpath: Annotated[
            str, typer.Option("--pythonpath", help="PYTHONPATH of the staged launcher (the agent, its deps).")
        ] = "",
        env: Annotated[
            list[str] | None, typer.Option("--env", help="NAME=VALUE for the launcher (repeatable).")
        ] = None,
        version_id: Annotated[
            str | None,
            typer.Option("--version-id", help="VERSION_ID= in extension-release (default SYSEXT_LEVEL=1.0)."),
        ] = None,
        raw: Annotated[
            bool, typer.Option("--raw", help="Also make DIR/piccolod.raw with mksquashfs.")
        ] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Lay out what the ebuilds install: DIR/base (coreos-base/piccolo-base's /usr files) and
        DIR/sysext (the piccolod system extension tree, with its extension-release).

        For booting a change without the Flatcar SDK: /usr/bin/piccolod in the sysext is a launcher for
        --python with --pythonpath. DIR must be new, empty or an earlier stage.
        """
        from piccolo_build.commands.render_cmd import plan
        from piccolo_build.stage import Launcher, stage

        cfg = load_for_cli(config_file, sets)
        plan(cfg)  # a value that cannot be rendered is a user error here too
        try:
            out = stage(cfg, output, Launcher(python, pythonpath, _env(env)), version_id=version_id, raw=raw)
        except OSError as exc:
            raise PiccoloError(f"cannot write {output}: {exc.strerror or exc}") from None
        if as_json:
            typer.echo(
                json.dumps({"output": str(out), "base": str(out / "base"), "sysext": str(out / "sysext")})
            )
        else:
            typer.echo(f"{out}: base/ and sysext/ staged" + (", piccolod.raw" if raw else ""))
