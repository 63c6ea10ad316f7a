"""``piccolod unpin``: remove the update-loop pin, so update_engine may install that version again.

After a rollback the agent pins the version that failed its gate in ``/etc/flatcar/update.conf``
(:mod:`piccolod.updates.pin`); this is the operator's way to clear it (a fixed release under the same
number, a broken check fixed on the device). Exit 0: removed, or there was none (said so); 3: the file
cannot be read or written (one line naming it).
"""

from __future__ import annotations

import argparse
import sys

from piccolod.commands import EXIT_CANNOT_ASSESS
from piccolod.text import printable
from piccolod.updates import pin


def run(args: argparse.Namespace) -> int:
    path = pin.conf_path()
    try:
        had = pin.unpin(path)
    except pin.PinError as exc:
        print(printable(f"piccolod: {exc}"), file=sys.stderr)
        return EXIT_CANNOT_ASSESS
    if had is None:
        print(printable(f"no update-loop pin in {path}"))
    else:
        print(printable(f"unpinned {had.version}: removed from {path}; update_engine may install it again"))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "unpin", help="remove the update-loop pin (the version a rollback keeps update_engine from)"
    )
    p.set_defaults(func=run)
