"""The ``piccolod`` command line (argparse: the device image carries no CLI framework).

Subcommands live in ``piccolod/commands/``, one module each, joined here. Usage errors exit 3, like
"could not assess", so a monitoring system never mistakes a typo for a verdict.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from piccolod import __version__

EXIT_USAGE = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    from piccolod.commands import command_modules

    p = _Parser(prog="piccolod", description="Piccolo OS health agent")
    p.add_argument("--version", action="version", version=f"piccolod {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in command_modules():
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help(sys.stderr)
        return EXIT_USAGE
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
