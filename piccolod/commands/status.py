"""``piccolod status [--json]``: both /usr slots, which one is booted, the last gate and rollback record,
how many rollbacks this machine came back from, the update-loop pin and the regression baseline.

Reads the GPT and the journal in the state directory only; it runs no check and needs no running agent.
A journal that cannot be used (not UTF-8, not JSON, nested too deep, too large, a FIFO, a symbolic link)
is one line naming the file on stderr and exit status 3, after the slot table; so is an
``/etc/flatcar/update.conf`` whose pin cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from piccolod import baseline as bl
from piccolod import journal, passtoken
from piccolod import record as rec
from piccolod.commands import EXIT_CANNOT_ASSESS, add_config_option, load
from piccolod.gatehook import detect_slot
from piccolod.model import to_plain
from piccolod.slot import format_table
from piccolod.text import printable
from piccolod.updates import pin


def run(args: argparse.Namespace) -> int:
    policy = load(args)
    if policy is None:
        return EXIT_CANNOT_ASSESS
    state_dir = Path(policy.agent.state_dir)
    slot = detect_slot(policy)
    error: str | None = None
    try:
        found = journal.read(state_dir)
    except journal.JournalError as exc:
        error, found = str(exc), journal.Journal()
    boot_id = rec.read_boot_id()
    record = found.rollback
    rolled = rec.update_status(record, slot, boot_id)
    last = found.boot
    token = _token(boot_id)
    try:
        pinned = pin.read()
    except pin.PinError as exc:
        error, pinned = error or str(exc), None
    if args.json:
        doc = {
            "boot_id": boot_id,
            "booted": {"slot": slot.name, "partuuid": slot.partuuid, "disk": slot.disk, "state": slot.state},
            "error": slot.error,
            "gpt": {
                "header": slot.gpt_header,
                "lba": slot.gpt_header_lba,
                "primary_error": slot.gpt_primary_error,
            },
            "slots": [asdict(r) for r in slot.rows],
            "update_status": rolled[0] if rolled else None,
            "rollback_reason": rolled[1] if rolled else None,
            "last_gate": to_plain(last) if last else None,
            "rollback_record": record.to_json() if record else None,
            "rollbacks": to_plain(found.rollbacks),
            "journal_error": error,
            "pass_token": token,
            "update_pin": {"version": pinned.version, "effective": pinned.effective, "path": pinned.path}
            if pinned
            else None,
            "baseline": to_plain(found.baseline) if found.baseline else None,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(format_table(slot))
        if rolled:
            print(f"update status: {rolled[0]}: {rolled[1]}")
        if last:
            verdict = last.verdict or "no verdict yet"
            print(
                printable(f"last gate: {verdict} on {last.slot} (boot {last.boot_id}): {last.reason or '-'}")
            )
            for c in last.failures:
                print(printable(f"  {c.component}: {c.failure_class}: {c.reason}"))
        else:
            print("last gate: none recorded")
        print(rec.format_record(record))
        print(rec.format_tally(found.rollbacks.count, found.rollbacks.last_at))
        print(f"pass token: {token}")
        print(_pin_line(pinned))
        print(bl.format_baseline(found.baseline))
    if error:
        print(f"piccolod: {error}", file=sys.stderr)
        return EXIT_CANNOT_ASSESS
    return 0


def _pin_line(pinned: pin.Pin | None) -> str:
    if pinned is None:
        return f"update pin: none ({pin.conf_path()})"
    how = "" if pinned.effective else " (NOT in effect: a later FLATCAR_RELEASE_VERSION line overrides it)"
    return printable(
        f"update pin: {pinned.version} in {pinned.path}{how}: update_engine is not offered it again; "
        "piccolod unpin clears it"
    )


def _token(boot_id: str) -> str:
    """The guard's pass token, as the guard would judge it."""
    path = passtoken.token_path()
    try:
        have = passtoken.read(path)
    except passtoken.TokenError as e:
        return printable(f"refused: {e}")
    if have is None:
        return f"none ({path})"
    return f"this boot's ({path})" if have == boot_id else printable(f"of another boot ({have!r}, {path})")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show the /usr slots, the last gate and the last rollback record")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=run)
