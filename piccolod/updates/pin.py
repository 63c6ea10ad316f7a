"""The update-loop pin: after a rollback, the version that failed is not installed again.

What update_engine does (flatcar/update_engine, ``omaha_request_params.cc``, ``omaha_request_action.cc``,
``simple_key_value_store.cc``): every update check reads ``FLATCAR_RELEASE_VERSION`` from the first of
``/etc/flatcar/update.conf``, ``/usr/share/flatcar/update.conf`` and ``/usr/share/flatcar/release``
that has the key, and sends it to the update server as the version the machine runs (the request's
``version=``). It never compares the version the server offers with anything: whatever the server
offers, it installs. The server decides, by comparing that version with its own: an Omaha server
offers an update only to a machine that runs an older version than the one it has. update_engine keeps
no list of refused versions, no preference for one, and no setting that says "not this one".

So the one lever a device has is what it says it runs. The pin is two lines appended to
``/etc/flatcar/update.conf``::

    # piccolod update-loop pin: 3975.2.0 failed its first-boot gate (piccolod unpin removes this)
    FLATCAR_RELEASE_VERSION=3975.2.0

update_engine reads the file as ``KEY=VALUE`` lines, a key being everything before the first ``=`` and
the last line of a key winning, a line without ``=`` ignored: the comment is nothing to it, and the pin
overrides any earlier ``FLATCAR_RELEASE_VERSION`` in the file. The server then sees a machine that
already runs the failed version and answers "no update" for it, and still offers any newer one. The pin
is a file update_engine reads at every check: it holds with the agent stopped, missing or broken.

:func:`read` reads the file the way update_engine does and says whether the pin is what update_engine
would send (another ``FLATCAR_RELEASE_VERSION`` line after it overrides it). :func:`pin` and
:func:`unpin` rewrite the file atomically, keeping every other line byte for byte and the file's mode,
and refuse a file they could not keep whole (larger than :data:`MAX_BYTES`, not UTF-8, not a regular
file, a symbolic link).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from piccolod.journal import write_atomic
from piccolod.safefile import UnsafeFile, read_regular
from piccolod.text import printable

UPDATE_CONF = Path("/etc/flatcar/update.conf")
UPDATE_CONF_ENV = "PICCOLOD_UPDATE_CONF"  # tests: another file
KEY = "FLATCAR_RELEASE_VERSION"
MARK = "# piccolod update-loop pin:"
MAX_BYTES = 64 * 1024  # update.conf is a few lines; a larger file is not rewritten
MAX_VERSION = 64
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")


class PinError(Exception):
    """The pin cannot be read or written; ``str()`` is one printable line naming the file."""


@dataclass(frozen=True)
class Pin:
    """The pin found in the file. ``effective``: update_engine sends this version (no later line of
    the file overrides it)."""

    version: str
    effective: bool
    path: str


def conf_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    value = env.get(UPDATE_CONF_ENV)
    return Path(value) if value else UPDATE_CONF


def valid_version(version: str) -> bool:
    return 0 < len(version) <= MAX_VERSION and _VERSION.match(version) is not None


def engine_values(text: str) -> dict[str, str]:
    """``text`` read as update_engine reads its configuration files: lines split on ``\\n`` only, a key
    everything before the first ``=`` (nothing trimmed), one pair of matching outer quotes removed from
    the value, the last line of a key winning; lines without ``=`` (comments) are nothing."""
    values: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def _read(path: Path) -> tuple[str, int] | None:
    """The file's text and mode (None: no file); raises :class:`PinError` for a file not to touch."""
    mode: list[int] = []

    def keep_mode(st: os.stat_result) -> str | None:
        mode.append(stat.S_IMODE(st.st_mode))
        return None

    try:
        data = read_regular(path, MAX_BYTES + 1, check=keep_mode)
    except UnsafeFile as e:
        raise PinError(printable(str(e))) from None
    if data is None:
        return None
    if len(data) > MAX_BYTES:
        raise PinError(f"{path}: larger than {MAX_BYTES} bytes: not read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PinError(f"{path}: not UTF-8 (byte {e.start})") from None
    if "\0" in text:
        raise PinError(f"{path}: holds a NUL byte")
    return text, mode[0] if mode else 0o644


def _ours(lines: list[str]) -> list[int]:
    """Indexes of the pin's value lines: a ``KEY=`` line right after a line starting with MARK."""
    return [
        i for i in range(1, len(lines)) if lines[i - 1].startswith(MARK) and lines[i].startswith(f"{KEY}=")
    ]


def read(path: Path | None = None) -> Pin | None:
    """The pin in ``path`` (the last one when the file holds several), or None; raises :class:`PinError`."""
    path = conf_path() if path is None else path
    found = _read(path)
    if found is None:
        return None
    lines = found[0].split("\n")
    ours = _ours(lines)
    if not ours:
        return None
    version = engine_values(lines[ours[-1]])[KEY]
    effective = engine_values(found[0]).get(KEY) == version and not any(
        line.startswith(f"{KEY}=") for line in lines[ours[-1] + 1 :]
    )
    return Pin(printable(version[:MAX_VERSION]), effective, str(path))


def _without_pin(text: str) -> str:
    lines = text.split("\n")
    drop: set[int] = set()
    for i in _ours(lines):
        drop.update((i - 1, i))
    return "\n".join(line for i, line in enumerate(lines) if i not in drop)


def pin(version: str, why: str, path: Path | None = None) -> Pin:
    """Pin ``version`` (replacing a pin already there); raises :class:`PinError`."""
    path = conf_path() if path is None else path
    if not valid_version(version):
        raise PinError(printable(f"not a version to pin: {version[:MAX_VERSION]!r}"))
    found = _read(path)
    text, mode = found if found is not None else ("", 0o644)
    kept = _without_pin(text)
    if kept and not kept.endswith("\n"):
        kept += "\n"
    note = " ".join(printable(why).replace("=", ":").split())[:200]
    try:
        write_atomic(
            path, f"{kept}{MARK} {version} {note} (piccolod unpin removes this)\n{KEY}={version}\n", mode
        )
    except OSError as e:
        raise PinError(f"{path}: cannot write: {e.strerror or e}") from None
    return Pin(version, True, str(path))


def unpin(path: Path | None = None) -> Pin | None:
    """Remove the pin; the pin that was there (None: there was none). The file goes when nothing else
    is left in it. Raises :class:`PinError`."""
    path = conf_path() if path is None else path
    found = _read(path)
    if found is None:
        return None
    had = read(path)
    if had is None:
        return None
    kept = _without_pin(found[0])
    try:
        if kept.strip():
            write_atomic(path, kept, found[1])
        else:
            path.unlink()
    except OSError as e:
        raise PinError(f"{path}: cannot write: {e.strerror or e}") from None
    return had
