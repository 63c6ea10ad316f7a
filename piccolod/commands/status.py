"""``piccolod status [--json]``: both /usr slots, which one is booted, the last gate and rollback record.

Reads the GPT and the state directory only; it runs no check and needs no running agent.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from piccolod import record as rec
from piccolod.commands import EXIT_CANNOT_ASSESS, add_config_option, load
from piccolod.gatehook import LAST_GATE_NAME, detect_slot
from piccolod.slot import format_table


def _last_gate(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / LAST_GATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run(args: argparse.Namespace) -> int:
    policy = load(args)
    if policy is None:
        return EXIT_CANNOT_ASSESS
    state_dir = Path(policy.agent.state_dir)
    slot = detect_slot(policy)
    try:
        record = rec.read(state_dir)
    except rec.RecordError as exc:
        print(f"piccolod: {exc}", file=sys.stderr)
        return EXIT_CANNOT_ASSESS
    boot_id = rec.read_boot_id()
    rolled = rec.update_status(record, slot, boot_id)
    last = _last_gate(state_dir)
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
            "last_gate": last,
            "rollback_record": record.to_json() if record else None,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(format_table(slot))
    if rolled:
        print(f"update status: {rolled[0]}: {rolled[1]}")
    if last:
        print(
            f"last gate: {last.get('startup_health_check')} on {last.get('slot')} "
            f"(boot {last.get('boot_id')}): {last.get('reason')}"
        )
    else:
        print("last gate: none recorded")
    print(rec.format_record(record))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show the /usr slots, the last gate and the last rollback record")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=run)
