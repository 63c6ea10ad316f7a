"""What the OS says about itself: its version, its board and its update group, read as hostile input.

Where Flatcar writes these (flatcar/scripts ``build_library/set_lsb_release``, run by ``build_image``):

- ``/usr/lib/os-release``: ``VERSION_ID`` (the release, ``4593.2.5``) and ``FLATCAR_BOARD``
  (``amd64-usr``); ``/etc/os-release`` is a link to it, and per os-release(5) an ``/etc/os-release``
  that exists is used instead of ``/usr/lib/os-release``, never merged with it;
- ``/usr/share/flatcar/release``: ``FLATCAR_RELEASE_VERSION`` (the version with its build id, when
  there is one) and ``FLATCAR_RELEASE_BOARD``: the fallback when os-release lacks a value;
- ``/usr/share/flatcar/update.conf``: ``GROUP=`` (the update group ``build_image --group`` set) and
  ``SERVER=``; an administrator's ``/etc/flatcar/update.conf`` overrides it key by key, as update_engine
  and flatcar/init's ``motdgen`` read it (the vendor file first, then the administrator's).

Every file is read through :func:`piccolod.model.read_bounded` (a regular file only, never blocking on a
FIFO, at most :data:`MAX_BYTES`); a file that is missing or unusable counts as absent, and a value is cut
to :data:`MAX_VALUE` printable characters, so nothing a file holds can make a metric label long,
multi-line or unbounded. Values that cannot be found are :data:`UNKNOWN`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from piccolod.model import ModelError, read_bounded

MAX_BYTES = 16 * 1024  # os-release and update.conf are a few hundred bytes
MAX_VALUE = 64
UNKNOWN = "unknown"


@dataclass(frozen=True)
class OsFiles:
    """Where the facts are read from (tests point these at files of their own)."""

    os_release: tuple[Path, ...] = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
    flatcar_release: Path = Path("/usr/share/flatcar/release")
    update_conf: tuple[Path, ...] = (Path("/usr/share/flatcar/update.conf"), Path("/etc/flatcar/update.conf"))


@dataclass(frozen=True)
class OsInfo:
    version: str = UNKNOWN
    board: str = UNKNOWN
    group: str = UNKNOWN


def label_text(value: str) -> str:
    """``value`` as a short, printable, one-line label value (:data:`UNKNOWN` when nothing is left)."""
    kept = "".join(c for c in value if c.isprintable()).strip()[:MAX_VALUE]
    return kept or UNKNOWN


def parse(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (os-release(5) syntax: comments, blank lines, one level of quotes)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or not key or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_values(path: Path) -> dict[str, str] | None:
    """The keys of ``path``, or None when it is missing or cannot be used."""
    try:
        data = read_bounded(path, MAX_BYTES)
    except ModelError:
        return None
    return parse(data.decode("utf-8", errors="replace"))


def first_values(paths: Iterable[Path]) -> dict[str, str]:
    """The keys of the first of ``paths`` that can be read (os-release(5): no merging)."""
    for path in paths:
        found = read_values(path)
        if found is not None:
            return found
    return {}


def merged_values(paths: Iterable[Path]) -> dict[str, str]:
    """The keys of every readable file of ``paths``, a later file winning key by key."""
    out: dict[str, str] = {}
    for path in paths:
        out.update(read_values(path) or {})
    return out


def _pick(*candidates: str | None) -> str:
    return next((label_text(c) for c in candidates if c and label_text(c) != UNKNOWN), UNKNOWN)


def read(files: OsFiles = OsFiles()) -> OsInfo:
    """The OS facts of this machine; never raises."""
    os_release = first_values(files.os_release)
    release = read_values(files.flatcar_release) or {}
    update = merged_values(files.update_conf)
    return OsInfo(
        version=_pick(os_release.get("VERSION_ID"), release.get("FLATCAR_RELEASE_VERSION")),
        board=_pick(os_release.get("FLATCAR_BOARD"), release.get("FLATCAR_RELEASE_BOARD")),
        group=_pick(update.get("GROUP")),
    )
