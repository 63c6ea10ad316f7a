"""``piccolo-build ci init|key``: the CI workflow rendered from piccolo.yaml, and a build's cache key
(:mod:`piccolo_build.ci`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from piccolo_build.ci import Provider
from piccolo_build.commands.build_cmd import ScriptsUrlOption
from piccolo_build.commands.config_cmd import ConfigOption, SetOption, load_for_cli
from piccolo_build.commands.render_cmd import WORKFLOW
from piccolo_build.context import DEFAULT_SCRIPTS_URL
from piccolo_build.errors import PiccoloError


def register(app: typer.Typer) -> None:
    from piccolo_build.cli import command_group

    group = command_group(
        app, "ci", "The CI workflow for this project's piccolo.yaml, and a build's cache key."
    )

    @group.command("init")
    def init(
        config: ConfigOption = None,
        sets: SetOption = None,
        provider: Annotated[Provider, typer.Option("--provider", help="The CI system.")] = Provider.GITHUB,
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Where to write the workflow.", dir_okay=False)
        ] = WORKFLOW,
        check: Annotated[
            bool, typer.Option("--check", help="Write nothing; exit 1 with a diff when OUTPUT differs.")
        ] = False,
    ) -> None:
        """Write the CI workflow: a {release, board} build matrix from piccolo.yaml, vm-test, and the
        signed release on tags (docs/release.md)."""
        from piccolo_build.atomic import atomic_write
        from piccolo_build.ci import workflow

        cfg = load_for_cli(config, sets)
        if check:
            diff = workflow.drift(cfg, output)
            if diff:
                typer.echo(diff, nl=False)
                raise PiccoloError(
                    f"{output} differs from what piccolo.yaml gives",
                    hint="run `piccolo-build ci init`",
                    exit_code=1,
                )
            typer.echo(f"{output}: up to date")
            return
        data = workflow.render(cfg)
        if output.is_file() and output.read_bytes() == data:
            typer.echo(f"{output}: unchanged")
            return
        if output.exists() and not workflow.is_generated(output):
            raise PiccoloError(
                f"{output} exists and was not written by `piccolo-build ci init`: refusing to replace it",
                hint="move it away, or write elsewhere with --output",
            )
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(output, data)
        except OSError as exc:
            raise PiccoloError(f"cannot write {output}: {exc.strerror or exc}") from None
        typer.echo(
            f"{output}: written ({provider} workflow for {', '.join(cfg.flatcar.build_releases())} x "
            f"{', '.join(str(b) for b in cfg.boards)})"
        )

    @group.command("key")
    def key(
        config: ConfigOption = None,
        sets: SetOption = None,
        scripts_url: ScriptsUrlOption = DEFAULT_SCRIPTS_URL,
    ) -> None:
        """Print the cache key of a build of this configuration: SHA-256 over the Flatcar tag the release
        resolves to now (and its commit), the rendered overlay, the agent sdist, the configuration, the
        update key and the lock."""
        from piccolo_build.ci.key import cache_key

        typer.echo(cache_key(load_for_cli(config, sets), scripts_url))
