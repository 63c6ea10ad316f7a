"""The ``piccolo-build`` command line: a thin Typer app joining the command modules.

Each module in ``piccolo_build/commands/`` has a ``register(app)`` that adds its commands. Heavy imports
(jinja2, docker, sh) happen inside the commands, so ``--help`` stays fast.

Exit codes and output (the contract, tested for every command): 0 success; 1 a check or build step
failed (a step's own code when it has one); 2 a user error: a bad configuration value or file
(:class:`~piccolo_build.errors.PiccoloError`) or a usage error (unknown option or command, missing
argument, bad option value). A user error is two lines on stderr, ``error: ...`` and ``hint: ...``, no
traceback unless ``--debug``; a usage error's hint is the command's usage line. 130: interrupted.
A command run without its subcommand prints its help on stderr and exits 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
import typer.main

from piccolo_build import __version__
from piccolo_build.errors import PiccoloError

PROG = "piccolo-build"
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name=PROG,
    help="Render, bundle, build and sign Piccolo OS: Flatcar Container Linux plus the piccolod health agent.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit


def help_without_command(ctx: typer.Context) -> None:
    """For a group's callback: run without a subcommand, print the help on stderr and exit 2.

    Done here rather than with ``no_args_is_help``, whose exit code and stream changed between click
    releases (help on stdout and 0, then a usage error, 2)."""
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:
        typer.echo(ctx.get_help(), err=True)
        raise typer.Exit(2)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
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
    help_without_command(ctx)


def command_group(parent: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """A group of subcommands (``piccolo-build NAME ...``) that prints its help without a subcommand."""
    group = typer.Typer(help=help_text, context_settings={"help_option_names": ["-h", "--help"]})
    parent.add_typer(group, name=name)
    group.callback(invoke_without_command=True)(help_without_command)
    return group


_registered = False


def _register() -> None:
    global _registered  # noqa: PLW0603 - the commands are added to the one app once
    if _registered:
        return
    from piccolo_build.commands import COMMAND_MODULES

    for module in COMMAND_MODULES:
        module.register(app)
    _registered = True


def _say(message: str, hint: str | None) -> None:
    from piccolod.text import printable  # the one escaper of both programs (not at import: --help)

    typer.echo(f"error: {printable(message.strip() or 'failed')}", err=True)
    if hint:
        typer.echo(f"hint: {printable(hint)}", err=True)


def framework_error(exc: BaseException, args: Sequence[str] = ()) -> tuple[str, str, int] | None:
    """(message, hint, exit code) for an exception of the CLI framework, or None for anything else.

    Click's UsageError and ClickException (which newer Typer releases vendor as ``typer._click``, older
    ones take from click itself) are recognised by what they carry, an integer ``exit_code`` and a
    ``format_message()``, never by the module that defines them, so any installed release is handled.
    The hint is the usage line of the command ``args`` name (the error's own context when it has one).
    """
    code = getattr(exc, "exit_code", None)
    format_message = getattr(exc, "format_message", None)
    if not isinstance(code, int) or not callable(format_message):
        return None
    ctx = getattr(exc, "ctx", None) or _context_of(args)
    usage = " ".join(str(ctx.get_usage()).split())
    usage = usage[:1].lower() + usage[1:]  # "usage: piccolo-build check [OPTIONS]"
    return str(format_message()), f"{usage}; see `{ctx.command_path} --help`", code


def _context_of(args: Sequence[str]) -> typer.Context:
    """A context for the deepest command ``args`` names (for errors raised without one)."""
    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name=PROG)
    for arg in args:
        if arg.startswith("-"):
            continue
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            break
        command = sub
        ctx = typer.Context(command, parent=ctx, info_name=arg)
    return ctx


def run(argv: Sequence[str] | None = None) -> int:
    """Run ``piccolo-build`` with ``argv`` (default: the process's arguments); return the exit code."""
    global _debug  # noqa: PLW0603 - each run starts without --debug
    _debug = False
    _register()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name=PROG, standalone_mode=False)
    except PiccoloError as exc:
        if _debug:
            raise
        _say(exc.message, exc.hint)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        known = framework_error(exc, args)
        if known is None:
            raise
        message, hint, code = known
        _say(message, hint)
        return code
    # Without standalone mode, Typer *returns* the code of a typer.Exit, and turns Ctrl-C into Exit(130).
    if isinstance(code, int) and code != 0:
        if code == EXIT_INTERRUPTED:
            typer.echo("interrupted", err=True)
        return code
    return 0


def main() -> None:
    sys.exit(run())
