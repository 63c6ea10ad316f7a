"""The executor of ``piccolo-build build``: runs the plan's steps, skips finished ones, resumes, reports.

Rules:

- Each step has an *input digest*: its own definition (argv, cwd, environment, inputs) plus the results
  of the steps before it (the tag and commit checked out, the rendered overlay's digest, the sdist's
  digest, the RDEPEND edit). A step whose digest matches the one recorded in ``build/state.json`` has
  already been done for the same inputs and is skipped. ``always`` steps (cheap ones, or the checkout
  of a floating tag) run every time; their results feed the digests of what follows.
- Once a step has actually run, every later step runs too: the SDK's state has moved on.
- ``--from STEP`` starts at STEP (which runs even if recorded as done). The ``always`` steps before it
  still run (the checks ``preflight`` and ``sdk-image``, so a bad key or a missing SDK image fails
  before any long step, and the cheap preparation steps, so the checkout carries the current overlay
  and edits); every other step before it must have been done for its current inputs, or the build is
  refused, naming the first such step to start from instead. ``--to STEP`` stops after it. The
  checks' results (a key fingerprint, an image id) do not count as inputs of later steps.
- Right after the checkout the plan is made again from the checkout's facts
  (:func:`piccolo_build.tree.read_tree_facts`): the SDK steps' flags depend on the tag. The step names
  stay the same, so ``--from`` and ``--to`` mean the same steps before and after.
- A failing step stops the build with the step's own exit code, the last lines of its log and the
  command that resumes from it. Its full output stays in ``build/logs/<step>.log``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from piccolo_build import actions
from piccolo_build.config import BuildConfig
from piccolo_build.context import BuildContext
from piccolo_build.errors import PiccoloError, StepFailed
from piccolo_build.plan import Action, Facts, Step
from piccolo_build.progress import Progress, elapsed
from piccolo_build.tree import TreeFacts

FAILURE_TAIL = 20
# Steps that only check (the signing key, the SDK image): run whenever a later step may, fail with their
# own message and hint, and never make later steps run again.
CHECKS = frozenset({Action.PREFLIGHT, Action.SDK_IMAGE})


@dataclass(frozen=True)
class Options:
    from_step: str | None = None
    to_step: str | None = None
    dry_run: bool = False
    resume: str = "piccolo-build build"  # the command line a resume hint starts with
    heartbeat: float = 30.0
    tty: bool | None = None


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "ran", "skipped", "would run", "would skip", "not selected"
    seconds: float = 0.0


class State:
    """``state.json``: finished steps, name -> {digest, result}. Rewritten atomically after each step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: dict[str, dict[str, Any]] = {}
        if path.is_file():
            # Only a record of what already ran: whatever is wrong with it, the steps just run again.
            try:
                data = json.loads(path.read_bytes())
                self.steps = {
                    str(name): entry
                    for name, entry in data["steps"].items()
                    if isinstance(entry, dict) and isinstance(entry.get("digest"), str)
                }
            except (ValueError, RecursionError, LookupError, AttributeError, TypeError):
                self.steps = {}

    def digest(self, name: str) -> str | None:
        entry = self.steps.get(name)
        return str(entry["digest"]) if entry else None

    def result(self, name: str) -> str | None:
        entry = self.steps.get(name)
        return entry.get("result") if entry else None

    def record(self, name: str, digest: str, result: str | None) -> None:
        self.steps[name] = {"digest": digest, "result": result}
        self._save()

    def forget(self, name: str) -> None:
        if self.steps.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"steps": self.steps}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def step_digest(step: Step, upstream: dict[str, str | None]) -> str:
    spec = {"step": step.to_json(), "upstream": upstream}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def select(steps: Sequence[Step], from_step: str | None, to_step: str | None) -> tuple[int, int]:
    """Indices [start, stop) of the steps to run; unknown names are a user error."""
    names = [s.name for s in steps]
    for flag, name in (("--from", from_step), ("--to", to_step)):
        if name is not None and name not in names:
            raise PiccoloError(f"{flag} {name}: no such step", hint="steps: " + " ".join(names))
    start = names.index(from_step) if from_step else 0
    stop = names.index(to_step) + 1 if to_step else len(names)
    if stop <= start:
        raise PiccoloError(f"--to {to_step} comes before --from {from_step}")
    return start, stop


class Executor:
    def __init__(
        self,
        cfg: BuildConfig,
        ctx: BuildContext,
        facts: Facts,
        steps: Sequence[Step],
        out: TextIO,
        *,
        replan: Callable[[TreeFacts], list[Step]] | None = None,
    ) -> None:
        self.cfg, self.ctx, self.facts, self.steps, self.out = cfg, ctx, facts, list(steps), out
        self.replan = replan
        self.tree: TreeFacts | None = None
        self.state = State(ctx.state_file)
        self.results: dict[str, str | None] = {s.name: self.state.result(s.name) for s in self.steps}

    def execute(self, options: Options) -> list[Outcome]:
        start, stop = select(self.steps, options.from_step, options.to_step)
        progress = Progress(self.out, total=len(self.steps), tty=options.tty, heartbeat=options.heartbeat)
        outcomes: list[Outcome] = []
        cascade = False
        for i, step in enumerate(self.steps):
            # A check's result (key fingerprint, image id) must not make the SDK steps run again.
            upstream = {s.name: self.results[s.name] for s in self.steps[:i] if s.action not in CHECKS}
            digest = step_digest(step, upstream)
            # Before --from, the cheap always-run steps run again (the overlay, the sdist, the edits of
            # the checkout follow the current configuration); the others are skipped, but only when
            # they were done for exactly the current inputs.
            selected = start <= i < stop or ((step.action in CHECKS or step.always) and i < stop)
            if not selected:
                if i < start:
                    self._check_done_before_from(step, digest, options)
                outcomes.append(Outcome(step.name, "not selected"))
                continue
            done = self.state.digest(step.name) == digest
            forced = cascade or step.always or (i == start and options.from_step is not None)
            if options.dry_run:
                outcomes.append(Outcome(step.name, "would run" if forced or not done else "would skip"))
                self._describe(i + 1, step, outcomes[-1].status)
                cascade = cascade or (not step.always and not done)
                continue
            if done and not forced:
                progress.message(
                    f"--- [{i + 1}/{len(self.steps)}] {step.name}: done for the same inputs, skipped"
                )
                outcomes.append(Outcome(step.name, "skipped"))
                continue
            before = self.results[step.name]
            seconds = self._run(i + 1, step, digest, progress, options)
            outcomes.append(Outcome(step.name, "ran", seconds))
            changed = (
                not step.always or self.results[step.name] != before or self.state.digest(step.name) != digest
            )
            cascade = cascade or (changed and step.action not in CHECKS)
            self.state.record(step.name, digest, self.results[step.name])
            if step.action is Action.CHECKOUT:
                self._plan_again()
        return outcomes

    def _plan_again(self) -> None:
        """The steps after the checkout, planned with the facts of the checked-out tree."""
        from piccolo_build.tree import read_tree_facts

        self.tree = read_tree_facts(self.ctx.scripts_dir)
        if self.replan is None:
            return
        new = self.replan(self.tree)
        if [s.name for s in new] != [s.name for s in self.steps]:
            raise PiccoloError("internal error: the plan's steps changed with the checkout")
        self.steps[:] = new

    def _check_done_before_from(self, step: Step, digest: str, options: Options) -> None:
        """A step skipped because of ``--from`` must have been done for the current inputs; otherwise
        starting later would build on stale results (and stamp the release with the new config)."""
        if step.name not in self.state.steps:
            reason = "has never finished"
        elif self.state.digest(step.name) != digest:
            reason = "was done for other inputs (configuration, overlay, tag or an earlier step changed)"
        else:
            return
        raise PiccoloError(
            f"cannot start at {options.from_step}: step {step.name} {reason}",
            hint=f"{options.resume} --from {step.name}",
        )

    def _describe(self, index: int, step: Step, status: str) -> None:
        what = shlex.join(step.argv) if step.action is Action.COMMAND else step.description
        self.out.write(f"[{index}/{len(self.steps)}] {step.name}: {status}: {what}\n")

    def _run(self, index: int, step: Step, digest: str, progress: Progress, options: Options) -> float:
        from piccolo_build.run import stream

        log = self.ctx.log_file(step.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        header = f"# {step.name} started {now}\n# {step.description}\n"
        if step.argv and step.action is Action.COMMAND:
            header += f"$ {shlex.join(step.argv)}\n# cwd: {step.cwd}\n"
        log.write_text(header, encoding="utf-8")

        def note(text: str) -> None:
            with log.open("a", encoding="utf-8") as f:
                f.write(text + "\n")
            progress.line(text)

        progress.start(index, step.name)
        code = 0
        error: PiccoloError | None = None
        try:
            if step.action is Action.COMMAND:
                code = stream(step.argv, log=log, cwd=step.cwd, env=dict(step.env), on_line=progress.line)
            else:
                env = actions.ActionEnv(
                    self.cfg, self.ctx, self.facts, step, note, progress.line, self.results, self.tree
                )
                self.results[step.name] = actions.ACTIONS[step.action](env)
        except PiccoloError as exc:
            error, code = exc, exc.exit_code
            note(f"error: {exc.message}")
        except OSError as exc:  # a full disk, a permission: one line, not a traceback
            error, code = PiccoloError(str(exc), exit_code=1), 1
            note(f"error: {exc}")
        except KeyboardInterrupt:
            progress.finish("interrupted")
            self.state.forget(step.name)
            raise
        if code == 0 and error is None:
            if step.action is Action.COMMAND:
                self.results[step.name] = None
            return progress.finish("ok")
        took = progress.finish(f"FAILED (exit code {code})")
        self.state.forget(step.name)
        if error is not None and step.action in CHECKS:
            raise error  # a bad key or a missing SDK image: its own message and hint say what to do
        raise self._failure(step, code, error, took, options)

    def _failure(
        self, step: Step, code: int, error: PiccoloError | None, took: float, options: Options
    ) -> StepFailed:
        log = self.ctx.log_file(step.name)
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-FAILURE_TAIL:]
        self.out.write(f"last {len(tail)} lines of {log}:\n" + "".join(f"  | {ln}\n" for ln in tail))
        self.out.flush()
        code = code if 0 < code < 256 else 128 + abs(code) if code < 0 else 1
        reason = f": {error.message}" if error else ""
        fix = error.hint if error is not None and error.hint else "fix the cause"
        return StepFailed(
            f"step {step.name} failed with exit code {code} after {elapsed(took)}{reason} (log: {log})",
            hint=f"{fix}, then resume with: {options.resume} --from {step.name}",
            exit_code=code,
        )
