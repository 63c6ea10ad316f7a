"""The gate's journal: one typed file in the state directory, one durable writer, bounded reads.

``journal.json`` in the state directory (``/var/lib/piccolod``, on the ROOT partition that both /usr
slots share) holds everything the gate must remember across a restart of the agent and across a reboot:

- ``boot``: the gate of the latest boot that ran one (:class:`BootGate`): its boot id and slot, when it
  began and its deadline on ``CLOCK_MONOTONIC`` (the same clock as systemd's ``...Monotonic``
  timestamps; it only means something within that boot), the verdict once there is one, and whether
  the reboot of a failed gate was requested. It answers the restart questions directly
  (:meth:`Journal.gate_of`): did a gate of this boot begin, did it finish and with what verdict, was a
  reboot requested, when does this boot's gate run out.
- ``rollback``: the record of the last failed gate (:class:`~piccolod.record.RollbackRecord`), which the
  agent on the other slot reads after GRUB fell back; ``previous_rollback``: the record a later pass
  moved aside.
- ``rollbacks``: how many rollbacks this machine has come back from and when the last one happened
  (:class:`RollbackTally`), counted once per record by the boot that finds it (the fallback boot), so the
  count and the time survive every reboot and a restarted agent never counts the same record twice.

The file is read with the same typed model as the configuration (:func:`piccolod.model.build`: frozen
dataclasses, wrong types refused, keys it does not know read past), and it is read defensively,
because a state directory can hold anything: :func:`read_bytes` opens without following a symbolic
link and without blocking on a FIFO (``O_NOFOLLOW | O_NONBLOCK``), accepts only a regular file
(``fstat``), and reads at most :data:`MAX_BYTES`; :func:`parse` wants UTF-8 and JSON nested at most
:data:`MAX_DEPTH` deep. Anything else is a :class:`JournalError` whose text is one line naming the
file. The agent then goes on as if there were no journal: on an unmarked slot that means a gate
(fail closed), on a marked slot nothing changes (never blocked); the next write replaces the bad file.

:class:`Store` is the one writer: every change is a new frozen :class:`Journal` written atomically
(temporary file, fsync, rename, fsync of the directory). A write that fails (``/var`` full or read-only,
exactly when storage fails) is logged as critical and the store keeps the new journal in memory, so
this process still never gates twice or reboots twice.

Files of earlier versions of the agent (``rollback.json``, ``reboot-requested.json``,
``last-gate.json``, ``starts.json``): ``rollback.json`` is read once, when there is no journal yet, so a
rollback recorded by an older agent is still reported; the other three only ever described one boot and
are ignored. None of them is written or deleted.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from piccolod.baseline import Baseline, Classified
from piccolod.model import ModelError, Source, build, to_plain
from piccolod.policy import FailureCondition
from piccolod.record import RollbackRecord
from piccolod.safefile import UnsafeFile, read_regular

log = logging.getLogger("piccolod.journal")

JOURNAL_NAME = "journal.json"
LEGACY_RECORD_NAME = "rollback.json"
FORMAT = 1
MAX_BYTES = 256 * 1024  # a journal is a few kilobytes; anything larger is not ours
MAX_DEPTH = 8  # the journal nests four levels (journal.rollback.components[i])
MAX_COUNT = 2**53  # a count read back is clamped to what a float (a metric sample) holds exactly
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class JournalError(Exception):
    """A state file exists but cannot be used; ``str()`` is one line that names the file."""


class GateVerdict(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # a marked slot: not gated


@dataclass(frozen=True)
class BootGate:
    """The gate of one boot. ``*_monotonic`` values are CLOCK_MONOTONIC seconds of that boot.
    ``failures``: the failing required checks of its verdict with their class
    (:mod:`piccolod.baseline`); on a passed verdict, the pre-existing failures ``warn`` let through."""

    ignores_unknown_keys: ClassVar[bool] = True

    boot_id: str
    slot: str | None
    partuuid: str | None
    slot_state: str
    started_at: float  # seconds since the epoch, for people
    started_monotonic: float
    deadline_monotonic: float
    verdict: GateVerdict | None = None
    condition: FailureCondition | None = None
    reason: str = ""
    attempts: int = 0
    finished_at: float | None = None
    reboot_planned: bool = False  # the verdict asks for one reboot into the previous slot
    reboot_requested: bool = False  # the reboot command ran (or was about to) in this boot: never again
    failures: tuple[Classified, ...] = ()

    @property
    def finished(self) -> bool:
        return self.verdict is not None

    @property
    def deadline_at(self) -> float:
        """The deadline as wall-clock seconds since the epoch (for people and metrics)."""
        return self.started_at + (self.deadline_monotonic - self.started_monotonic)


@dataclass(frozen=True)
class RollbackTally:
    """The rollbacks this machine came back from. ``last_at`` is the ``failed_at`` of the last record
    counted (seconds since the epoch, 0: none yet), ``last_boot_id`` that record's boot id."""

    ignores_unknown_keys: ClassVar[bool] = True

    count: int = 0
    last_at: float = 0.0
    last_boot_id: str | None = None

    def counted(self, record: RollbackRecord, now: float) -> RollbackTally:
        """The tally with ``record`` counted (itself when it already is). Values read from disk are
        clamped: a count to 0..:data:`MAX_COUNT`, a time to 0..``now`` (a clock set wrong in the failing
        boot must not keep a rollback looking recent for ever)."""
        if record.boot_id == self.last_boot_id:
            return self
        return RollbackTally(
            count=min(max(self.count, 0), MAX_COUNT - 1) + 1,
            last_at=min(max(record.failed_at, 0.0), now),
            last_boot_id=record.boot_id,
        )


@dataclass(frozen=True)
class Journal:
    ignores_unknown_keys: ClassVar[bool] = True

    format: int = FORMAT
    boot: BootGate | None = None
    rollback: RollbackRecord | None = None
    previous_rollback: RollbackRecord | None = None
    rollbacks: RollbackTally = field(default_factory=RollbackTally)
    baseline: Baseline | None = None

    def gate_of(self, boot_id: str, partuuid: str | None = None) -> BootGate | None:
        """The gate of boot ``boot_id`` (on the slot ``partuuid`` when given), or None if none began."""
        gate = self.boot
        if gate is None or gate.boot_id != boot_id:
            return None
        if partuuid is not None and gate.partuuid != partuuid:
            return None
        return gate


# --- reading -----------------------------------------------------------------------------------------


def read_bytes(path: Path, limit: int = MAX_BYTES) -> bytes | None:
    """The bytes of the regular file ``path`` (None when it does not exist), read without following a
    symbolic link, without blocking, and at most ``limit`` of them. Raises :class:`JournalError`."""
    try:
        return read_regular(path, limit)
    except UnsafeFile as e:
        raise JournalError(str(e)) from None


def _depth(data: bytes) -> int:
    """How deep the JSON arrays and objects of ``data`` nest (brackets inside strings do not count)."""
    deepest = depth = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b'""', data)):
        depth += 1 if m.group() in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def load_json(data: bytes, path: Path) -> Any:
    """UTF-8 JSON no deeper than :data:`MAX_DEPTH`, finite numbers only; else :class:`JournalError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JournalError(f"{path}: not UTF-8 (byte {e.start})") from None
    if _depth(data) > MAX_DEPTH:
        raise JournalError(f"{path}: JSON nested more than {MAX_DEPTH} deep")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except ValueError as e:  # JSONDecodeError, a number out of range, an integer of too many digits
        raise JournalError(f"{path}: not JSON: {' '.join(str(e).split())[:200]}") from None
    except RecursionError:  # cannot happen below MAX_DEPTH; never a traceback if it does
        raise JournalError(f"{path}: JSON nested too deep") from None


def parse(data: bytes, path: Path) -> Journal:
    """The journal in ``data`` (the bytes of ``path``); raises :class:`JournalError`."""
    value = load_json(data, path)
    if not isinstance(value, dict):
        raise JournalError(f"{path}: not a journal (not a JSON object)")
    try:
        journal = build(Journal, value, Source(str(path)))
    except ModelError as e:
        raise JournalError(" ".join(str(e).split())) from None
    if journal.format != FORMAT:
        raise JournalError(f"{path}: format {journal.format}, this agent reads format {FORMAT}")
    return journal


def _legacy_record(state_dir: Path) -> RollbackRecord | None:
    """An older agent's ``rollback.json``, read once when there is no journal yet (None if unusable)."""
    path = state_dir / LEGACY_RECORD_NAME
    try:
        data = read_bytes(path)
        if data is None:
            return None
        value = load_json(data, path)
        return build(RollbackRecord, value, Source(str(path)))
    except (JournalError, ModelError) as e:
        log.error("ignoring an older agent's rollback record: %s", " ".join(str(e).split()))  # noqa: TRY400
        return None


def read(state_dir: Path) -> Journal:
    """The journal of ``state_dir`` (an empty one when there is none); raises :class:`JournalError`."""
    path = state_dir / JOURNAL_NAME
    data = read_bytes(path)
    if data is None:
        legacy = _legacy_record(state_dir)
        return Journal(rollback=legacy) if legacy else Journal()
    return parse(data, path)


# --- writing -----------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` atomically and durably (tmp + fsync + rename + fsync of the directory),
    as a file of ``mode`` (None: 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def encode(journal: Journal) -> str:
    return json.dumps(to_plain(journal), indent=2, sort_keys=True) + "\n"


class Store:
    """The journal of one state directory and its one writer (:meth:`put`)."""

    def __init__(self, state_dir: Path, journal: Journal | None = None, error: str | None = None) -> None:
        self.state_dir = state_dir
        self.path = state_dir / JOURNAL_NAME
        self.journal = journal if journal is not None else Journal()
        self.error = error  # why the file on disk was not used (None: it was, or there was none)

    @classmethod
    def load(cls, state_dir: Path) -> Store:
        """The store of ``state_dir``; an unusable journal is logged (one line) and treated as empty."""
        try:
            return cls(state_dir, read(state_dir))
        except JournalError as e:
            log.error("%s; going on without it (the next write replaces it)", e)  # noqa: TRY400
            return cls(state_dir, Journal(), str(e))

    def put(self, journal: Journal) -> bool:
        """Make ``journal`` the current one and write it; False (logged as critical) if it could not be
        written: the new journal still holds for this process."""
        self.journal = journal
        try:
            write_atomic(self.path, encode(journal))
        except OSError as e:
            log.critical("cannot write %s: %s; this process goes on from memory", self.path, e.strerror)
            return False
        return True

    def put_gate(self, gate: BootGate) -> bool:
        return self.put(replace(self.journal, boot=gate))

    def begin(self, gate: BootGate) -> BootGate:
        self.put_gate(gate)
        return gate

    def finish(self, gate: BootGate, **verdict: Any) -> BootGate:
        done = replace(gate, finished_at=time.time(), **verdict)
        self.put_gate(done)
        return done

    def reboot_requested(self, gate: BootGate) -> BootGate:
        done = replace(gate, reboot_requested=True)
        self.put_gate(done)
        return done

    def record_rollback(self, record: RollbackRecord, gate: BootGate) -> None:
        self.put(replace(self.journal, boot=gate, rollback=record))

    def count_rollback(self, record: RollbackRecord) -> RollbackTally:
        """Count the rollback ``record`` describes, once (the fallback boot calls this); the tally."""
        tally = self.journal.rollbacks.counted(record, time.time())
        if tally is not self.journal.rollbacks:
            self.put(replace(self.journal, rollbacks=tally))
        return tally

    def put_baseline(self, baseline: Baseline) -> bool:
        return self.put(replace(self.journal, baseline=baseline))

    def supersede_rollback(self) -> None:
        """A gate passed: keep the old rollback record as the previous one, out of the way."""
        if self.journal.rollback is not None:
            self.put(replace(self.journal, rollback=None, previous_rollback=self.journal.rollback))
