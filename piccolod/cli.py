"""The ``piccolod`` command line (argparse: the device image carries no CLI framework).

Subcommands live in ``piccolod/commands/``, one module each, joined here. Usage errors exit 3, like
"could not assess" (the monitoring-plugin convention's UNKNOWN), so a monitoring system never mistakes
a typo for a verdict (``check`` exits 2 for unhealthy). They print two lines on stderr: the error, then
the command's usage on one line, with control characters escaped.

The agent's own dependencies are imported where they are used, never to build the parser, so
``piccolod --help`` and every ``piccolod COMMAND --help`` work in any install. A command that needs a
missing one prints one line naming the package and how to install it, and exits 1 from ``serve`` (the
unit's "cannot start") or 3 from the others ("could not assess").
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from piccolod import __version__

EXIT_USAGE = 3

# Python module -> the distribution that provides it.
DEPENDENCIES = {"yaml": "PyYAML", "tpm2_pytss": "tpm2-pytss"}


def missing_dependency(exc: ImportError) -> str | None:
    """The one-line message for an agent dependency that is not installed, else None."""
    top = (exc.name or "").partition(".")[0]
    dist = DEPENDENCIES.get(top)
    if dist is None:
        return None
    return f"piccolod: {dist} is not installed (no Python module {top!r}): pip install {dist}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from piccolod.text import printable

        usage = " ".join(self.format_usage().split())
        self.exit(EXIT_USAGE, f"{printable(self.prog)}: error: {printable(message)}\n{printable(usage)}\n")


def parser() -> argparse.ArgumentParser:
    from piccolod.commands import command_modules

    p = _Parser(prog="piccolod", description="Piccolo OS health agent")
    p.add_argument("--version", action="version", version=f"piccolod {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in command_modules():
        module.add_parser(sub)
    for command in sub.choices.values():  # so an unknown option is reported with its command's usage
        command.set_defaults(command_parser=command)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, unknown = p.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", p).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        p.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except ImportError as exc:
        message = missing_dependency(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        if args.command == "serve":
            from piccolod.commands.serve import EXIT_CANNOT_START  # "cannot start", not the gate's 3

            return EXIT_CANNOT_START
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
