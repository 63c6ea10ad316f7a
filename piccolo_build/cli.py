"""The ``piccolo-build`` command line: a thin Typer app joining the command modules.

Each module in ``piccolo_build/commands/`` has a ``register(app)`` that adds its commands. Heavy imports
(jinja2, docker, sh) happen inside the commands, so ``--help`` stays fast. User errors are
:class:`~piccolo_build.errors.PiccoloError`: one line, a hint, exit code 2 (no traceback unless --debug).
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from piccolo_build import __version__
from piccolo_build.errors import PiccoloError

app = typer.Typer(
    name="piccolo-build",
    help="Render, bundle, build and sign Piccolo OS: Flatcar Container Linux plus the piccolod health agent.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"piccolo-build {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log each step.")] = False,
) -> None:
    global _debug  # noqa: PLW0603 - set once per process at the entry point
    _debug = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _register() -> None:
    from piccolo_build.commands import COMMAND_MODULES

    for module in COMMAND_MODULES:
        module.register(app)


def main() -> None:
    _register()
    try:
        code = app(standalone_mode=False)
    except PiccoloError as exc:
        if _debug:
            raise
        typer.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            typer.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    # Without standalone mode, Typer *returns* the code of a typer.Exit, and turns Ctrl-C into Exit(130).
    if isinstance(code, int) and code != 0:
        if code == 130:
            typer.echo("interrupted", err=True)
        sys.exit(code)
