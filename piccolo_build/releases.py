"""Flatcar release tags and channels, and whether a checked-out release builds, decided from its files.

flatcar/scripts tags every release ``<channel>-<major>.<minor>.<patch>`` on four channels: ``lts``,
``stable``, ``beta`` and ``alpha``. ``flatcar.release`` names a channel (the newest tag of that channel,
by version order, not string order) or pins one tag.

:func:`judge` says whether the checkout at a tag builds, from facts read from it, never from a list of
tested tags (docs/flatcar.md "Supported releases"): build_image takes ``--base_sysexts`` (the piccolod
sysext needs it), the board profiles enable a Python target our ebuilds are rendered for, every atom
our ebuilds name resolves there with stable keywords (:func:`piccolo_build.treedeps.unresolved`), and
the SDK has what the packages that compile need (Rust and crates for cryptography:
:func:`piccolo_build.treedeps.compiles`). A release that does not build is refused right after the
checkout with that one reason (exit 2); ``plan --scripts-dir`` prints the verdict before any build.
:func:`table` is the supported-releases table of docs/flatcar.md and the README, made from verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from piccolo_build.lock import Lock
    from piccolo_build.plan import Facts
    from piccolo_build.tree import TreeFacts
    from piccolo_build.treedeps import Compile

CHANNELS = ("lts", "stable", "beta", "alpha")
TAG_RE = re.compile(r"(?P<channel>lts|stable|beta|alpha)-(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)")
RELEASE_RE = re.compile(rf"(?:{'|'.join(CHANNELS)})(?:-\d+\.\d+\.\d+)?")


@dataclass(frozen=True)
class Verdict:
    """Whether a checkout builds, and why in one line."""

    builds: bool
    reason: str  # why it does not build, or what the build follows there
    python: str = ""  # PYTHON_COMPAT of our ebuilds at this tree ("" when there is none)
    compiles: tuple[Compile, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "builds": self.builds,
            "reason": self.reason,
            "python": self.python,
            "compiles": [c.to_json() for c in self.compiles],
        }


def judge(
    scripts_dir: Path,
    facts: TreeFacts,
    lock: Lock,
    *,
    sysext_packages: Sequence[str],
    agent: tuple[str, str],
    arches: Sequence[str] = ("amd64", "arm64"),
) -> Verdict:
    """The verdict on the checkout at ``scripts_dir`` whose facts are ``facts`` (see the module doc)."""
    from piccolo_build import treedeps

    python = facts.python_compat
    if facts.sysext_separator is None:
        return Verdict(False, "build_image has no --base_sysexts, which the piccolod sysext needs", python)
    if not facts.python_targets:
        return Verdict(False, "the board profiles enable no Python target (PYTHON_TARGETS)", python)
    tree = treedeps.view(scripts_dir, facts, arches)
    missing = treedeps.unresolved(tree, lock)
    if missing:
        return Verdict(False, f"no stable-keyworded {'; '.join(missing)} at this tag", python)
    compiles = tuple(treedeps.compiles(tree, lock, sysext_packages, agent))
    problems = [f"{c.package}: {p}" for c in compiles for p in c.problems]
    if problems:
        return Verdict(
            False, "the SDK lacks what the sysext's packages need: " + "; ".join(problems), python, compiles
        )
    theirs = [c for c in compiles if not c.origin.startswith("ours")]
    notes = [
        f"--base_sysexts entries name{facts.sysext_separator}packages",
        "qemu_uefi needs build_image oem_sysext first"
        if facts.prebuilt_oem_sysext
        else "image_to_vm.sh builds the OEM sysext itself",
        "compiles besides ours: " + (", ".join(c.brief() for c in theirs) or "nothing"),
    ]
    return Verdict(True, "; ".join(notes), python, compiles)


def judge_checkout(scripts_dir: Path, plan_facts: Facts, facts: TreeFacts | None = None) -> Verdict:
    """:func:`judge` with the lock in use and the plan's sysext packages (what ``plan`` and the build's
    checkout step ask)."""
    from piccolo_build.lock import load_lock
    from piccolo_build.tree import read_tree_facts

    facts = facts if facts is not None else read_tree_facts(scripts_dir)
    return judge(
        scripts_dir,
        facts,
        load_lock(),
        sysext_packages=plan_facts.sysext_packages,
        agent=(plan_facts.agent_atom, plan_facts.agent_version),
    )


def refuse(tag: str, verdict: Verdict) -> None:
    """One clear line (exit 2) when ``verdict`` says the release at ``tag`` does not build."""
    if not verdict.builds:
        raise PiccoloError(
            f"flatcar.release: {tag} does not build: {verdict.reason}",
            hint="pick a release that builds (docs/flatcar.md; `piccolo-build plan --scripts-dir DIR` "
            "judges a checkout)",
        )


def table(verdicts: Iterable[tuple[str, Verdict]]) -> str:
    """The supported-releases table as Markdown: one row per tag, from its verdict."""
    rows = ["| tag | builds | PYTHON_COMPAT | why (read from the tag) |", "|---|---|---|---|"]
    for tag, v in verdicts:
        why = v.reason.replace("|", "\\|")
        rows.append(f"| `{tag}` | {'yes' if v.builds else 'no'} | `{v.python or '-'}` | {why} |")
    return "\n".join(rows) + "\n"


def version(tag: str) -> tuple[int, int, int] | None:
    m = TAG_RE.fullmatch(tag)
    return (int(m["major"]), int(m["minor"]), int(m["patch"])) if m else None


def channel_of(release: str) -> str:
    """``stable`` -> stable; ``beta-4757.1.0`` -> beta."""
    return release.split("-", 1)[0]


def is_channel(release: str) -> bool:
    return release in CHANNELS


def newest(channel: str, tags: Iterable[str]) -> str | None:
    """The newest ``<channel>-NNNN.N.N`` tag by version (not string) order; None when there is none."""
    found = [(v, t) for t in tags if t.startswith(f"{channel}-") and (v := version(t)) is not None]
    return max(found)[1] if found else None
