"""The kernel command line, read as the initrd reads it: one table of cases (``tests/fixtures/
cmdline_cases.json``) against the agent's reader, and its answers against the real programs.

- every row, through :mod:`piccolod.cmdline` (the guard is held to the same rows and to the agent on
  random lines in ``tests/test_guard_differential.py``);
- (``full``) every row's systemd answers against the real ``systemd-fstab-generator`` of systemd 252 (the
  host's) and 257 (the trixie root's), run in initrd mode; its early-init answers against busybox's own
  field splitting; and a seeded slice of random command lines against both generators, version by
  version.
"""

from __future__ import annotations

import pytest

from piccolod import cmdline as cl
from tests.fixtures.cmdline_cases import (
    AMBIGUOUS,
    REFUSED,
    answers,
    generator_what,
    load,
    random_cmdlines,
)
from tests.fixtures.guard import agent_readings

CASES = load()
SEED = 20_261_214
GENERATOR_LINES = 150


def _id(i: int) -> str:
    return f"{i}-{CASES[i].why[:40]}"


@pytest.mark.parametrize("i", range(len(CASES)), ids=_id)
def test_the_agent_reads_every_row_as_the_table_says(i: int) -> None:
    case = CASES[i]
    assert agent_readings(case.cmdline) == (case.usr, case.flatcar_usr, case.flatcar_verity_usr), case.why


def test_the_table_covers_what_issue_13_found() -> None:
    whys = " ".join(c.why for c in CASES)
    for needle in ("carriage return", "quotes anywhere", "rd.", "'-' and '_'", "last occurrence",
                   "empty value",
                   "invalid UTF-8", "NUL", "menu entry", "dm-verity"):  # fmt: skip
        assert needle in whys, needle
    assert any(c.usr == AMBIGUOUS for c in CASES) and any(c.usr == REFUSED for c in CASES)
    assert sum(c.usr not in (None, AMBIGUOUS, REFUSED) for c in CASES) >= 30


def test_one_reading_when_252_and_257_differ_is_none() -> None:
    line = b"usrhash= mount.usrflags=ro"
    assert (cl.usr_what_of(line, 252), cl.usr_what_of(line, 257)) == (b"/dev/mapper/usr", None)
    assert cl.usr_what(line) is cl.AMBIGUOUS


@pytest.mark.full
@pytest.mark.parametrize("i", range(len(CASES)), ids=_id)
def test_every_row_is_what_the_real_programs_do(i: int) -> None:
    """The table's answers, recomputed from systemd 252's and 257's generators and busybox's sh."""
    case = CASES[i]
    now = answers(case.cmdline)
    if case.systemd is not None:
        for v in (252, 257):
            want = case.systemd[v]
            assert now[f"systemd_{v}"] == (None if want is None else want.decode("latin-1")), (v, case.why)
    assert (now["usr"], now["flatcar_usr"], now["flatcar_verity_usr"]) == tuple(
        x.decode("latin-1") if isinstance(x, bytes) else x
        for x in (case.usr, case.flatcar_usr, case.flatcar_verity_usr)
    ), case.why


@pytest.mark.full
def test_random_command_lines_read_as_the_real_generators(tmp_path: object) -> None:
    """Seeded random lines (quotes, separators, bytes a bootloader may pass): the agent's reading of each
    systemd version is what that version's generator writes."""
    differ = []
    for line in random_cmdlines(SEED, GENERATOR_LINES):
        if b"\0" in line:
            continue  # the environment cannot carry it; the reader refuses such a line anyway
        for v in (252, 257):
            real, ours = generator_what(line, v), cl.usr_what_of(line, v)
            if real != ours:
                differ.append((v, line, real, ours))
    assert not differ, differ[:5]
