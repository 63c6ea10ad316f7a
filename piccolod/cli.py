"""The ``piccolod`` command line (argparse: the device image carries no CLI framework).

Subcommands live in ``piccolod/commands/``, one module each, joined here. Usage errors exit 3, like
"could not assess" (the monitoring-plugin convention's UNKNOWN), so a monitoring system never mistakes
a typo for a verdict (``check`` exits 2 for unhealthy). They print two lines on stderr: the error, then
the command's usage on one line, with control characters escaped.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from piccolod import __version__

EXIT_USAGE = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from piccolod.model import printable

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
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
