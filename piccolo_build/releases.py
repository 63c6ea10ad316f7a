"""Flatcar release tags and channels, and which releases the default configuration builds on.

flatcar/scripts tags every release ``<channel>-<major>.<minor>.<patch>`` on four channels: ``lts``,
``stable``, ``beta`` and ``alpha``. ``flatcar.release`` names a channel (the newest tag of that channel,
by version order, not string order) or pins one tag.

:data:`SUPPORT` is the supported-releases table (docs/flatcar.md shows it, and a test checks it against
every tag of the real trees the tests clone). It is keyed by channel and major version: the point
releases of one major share its package set. A release in the table as unsupported is refused in
``preflight`` (a pinned tag) or right after the checkout (a channel that resolves to it), with the
reason; a release not in the table is judged by the in-tree check (:mod:`piccolo_build.treecheck`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from piccolo_build.errors import PiccoloError

CHANNELS = ("lts", "stable", "beta", "alpha")
TAG_RE = re.compile(r"(?P<channel>lts|stable|beta|alpha)-(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)")
RELEASE_RE = re.compile(rf"(?:{'|'.join(CHANNELS)})(?:-\d+\.\d+\.\d+)?")


@dataclass(frozen=True)
class Support:
    """One row of the supported-releases table."""

    release: str  # <channel>-<major>
    tested_tag: str  # the tag the tests build against
    supported: bool
    reason: str  # why it does not build, or what is particular about it


SUPPORT: tuple[Support, ...] = (
    Support(
        "lts-4081",
        "lts-4081.3.10",
        False,
        "portage-stable has no dev-python/cryptography, dev-python/cffi or dev-python/pycparser, "
        "which tpm2-pytss needs (cryptography is a Rust crate tree we do not vendor)",
    ),
    Support(
        "stable-4230",
        "stable-4230.2.3",
        False,
        "Flatcar builds Python 3.11 there (coreos profile: python_targets_python3_12 use.masked); "
        "our ebuilds target python3_12 (its --base_sysexts entries are name:packages, which the plan "
        "follows)",
    ),
    Support("stable-4593", "stable-4593.2.5", True, "image_to_vm.sh builds the OEM sysext itself"),
    Support("beta-4757", "beta-4757.1.0", True, "qemu_uefi needs build_image oem_sysext first"),
    Support("alpha-4790", "alpha-4790.0.0", True, "qemu_uefi needs build_image oem_sysext first"),
)


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


def support(tag: str) -> Support | None:
    """The table's row for ``tag`` (by channel and major version), None when the table does not say."""
    m = TAG_RE.fullmatch(tag)
    if m is None:
        return None
    key = f"{m['channel']}-{m['major']}"
    return next((s for s in SUPPORT if s.release == key), None)


def refuse_unsupported(tag: str) -> None:
    """One clear line when the table says ``tag`` does not build."""
    row = support(tag)
    if row is not None and not row.supported:
        raise PiccoloError(
            f"flatcar.release: {tag} is not supported: {row.reason}",
            hint="pick a supported release (docs/flatcar.md): "
            + ", ".join(s.release + ".*" for s in SUPPORT if s.supported),
        )


def table() -> str:
    """The supported-releases table as Markdown (docs/flatcar.md carries exactly this)."""
    rows = ["| release | tag the tests build | builds | notes |", "|---|---|---|---|"]
    rows += [
        f"| `{s.release}.*` | `{s.tested_tag}` | {'yes' if s.supported else 'no'} | {s.reason} |"
        for s in SUPPORT
    ]
    return "\n".join(rows) + "\n"
