"""Quoting filters for the languages the overlay is written in: bash (ebuilds), systemd units, XML.

Each filter either returns text that means exactly the given value in its target language or raises
:class:`UnsafeValue`; nothing that cannot be expressed safely reaches a template. Rules followed:

- bash: a single-quoted word holds anything but NUL and ``'`` (written ``'\\''``); text meant for the
  inside of double quotes (so ``${PV}`` can sit next to it) must not contain ``$ ` " \\``.
- systemd (systemd.syntax(7), systemd.unit(5) "Specifiers", systemd.service(5) "Command lines"):
  a setting value is one line, ``%`` starts a specifier and is written ``%%``, a trailing backslash
  continues the line; in command lines ``$`` expands variables (``$$``), ``\\`` escapes and quotes
  group words, so an argument is double-quoted with C-style escapes when it needs it.
- XML 1.0: ``& < > " '`` as entities.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class UnsafeValue(ValueError):
    """A value cannot be written safely in the target language."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str, where: str) -> str:
    if _CONTROL.search(value):
        raise UnsafeValue(f"{where}: control characters (newline, tab, ...) are not allowed in {value!r}")
    return value


def bash_word(value: object) -> str:
    """A single-quoted bash word: ``it's`` -> ``'it'\\''s'``."""
    text = _no_control(str(value), "bash")
    return "'" + text.replace("'", "'\\''") + "'"


def bash_dq(value: object) -> str:
    """Text safe inside bash double quotes, returned unchanged (no quotes added)."""
    text = _no_control(str(value), "bash")
    bad = sorted({c for c in text if c in '$`"\\'})
    if bad or "!" in text:
        raise UnsafeValue(f"bash: {' '.join(bad or ['!'])} cannot appear inside double quotes: {text!r}")
    return text


def unit_value(value: object) -> str:
    """A systemd setting value (one line, specifiers escaped, no line continuation)."""
    text = _no_control(str(value), "systemd")
    if text != text.strip():
        raise UnsafeValue(f"systemd: leading or trailing white space would be lost: {text!r}")
    if text.endswith("\\"):
        raise UnsafeValue(f"systemd: a trailing backslash continues the line: {text!r}")
    return text.replace("%", "%%")


def unit_path(value: object) -> str:
    """An absolute, normalised path in a unit setting (no white space, quotes or ``..``)."""
    text = unit_value(value)
    if not text.startswith("/") or any(p in ("..", ".") for p in text.split("/")) or "//" in text:
        raise UnsafeValue(f"systemd: not a normalised absolute path: {text!r}")
    if re.search(r"[\s'\"\\]", text):
        raise UnsafeValue(f"systemd: white space, quotes or backslashes in a path: {text!r}")
    return text


_PLAIN_ARG = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def unit_exec_arg(value: object) -> str:
    """One word of an ``Exec*=`` command line, quoted and escaped when needed."""
    text = _no_control(str(value), "systemd")
    escaped = text.replace("%", "%%").replace("$", "$$")
    if text and _PLAIN_ARG.fullmatch(text) and not text.startswith(("@", "-", ":", "+", "!", "|")):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{escaped}"'


def xml_text(value: object) -> str:
    text = _no_control(str(value), "XML")
    for raw, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&apos;")):
        text = text.replace(raw, entity)
    return text


FILTERS: dict[str, Callable[[Any], str]] = {
    "bash": bash_word,
    "bash_dq": bash_dq,
    "unit": unit_value,
    "unit_path": unit_path,
    "unit_arg": unit_exec_arg,
    "xml": xml_text,
}
