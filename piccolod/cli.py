"""The ``piccolod`` command line (argparse: the device image carries no CLI framework)."""

from __future__ import annotations

import argparse
import sys

from piccolod import __version__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="piccolod", description="Piccolo OS health agent")
    p.add_argument("--version", action="version", version=f"piccolod {__version__}")
    p.add_subparsers(dest="command", metavar="COMMAND")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
