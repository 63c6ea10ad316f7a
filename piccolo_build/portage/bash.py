"""Variable assignments of an ebuild or a profile's ``make.defaults``, read as text.

Only what these files use to say what they are: ``NAME="..."``, ``NAME='...'``, ``NAME=word``,
``NAME=( ... )`` and ``NAME+=...`` at the start of a line (indentation allowed, so an assignment inside
``if ... else ... fi`` counts; the last one wins), and ``inherit`` lines. A double-quoted value may hold
``$( ... )`` with quotes of its own (``"$(python_gen_cond_dep '...' "${PYTHON_TESTED[@]}")"``).
``${NAME}``, ``${NAME[@]}`` and ``$NAME`` of variables assigned earlier (or given) are substituted (an
array as its words), ``${PV%.*}``-style
operators are not; ``$(ver_cut A-B)`` is computed from ``PV``. Anything else stays as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_START = re.compile(r"^[ \t]*(?:export[ \t]+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<append>\+?)=", re.M)
_INHERIT = re.compile(r"^[ \t]*inherit[ \t]+(?P<names>[^\n;#]*)", re.M)
_REFERENCE = re.compile(
    r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:\[[@*]\])?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
_VER_CUT = re.compile(r"\$\(ver_cut (?P<start>\d+)(?:-(?P<end>\d+)?)?\)")


def _double_quoted(text: str, i: int) -> tuple[str, int]:
    """The body of the double-quoted string whose opening quote is at ``i``, and the index after it.
    Quotes inside ``$( ... )`` belong to the command substitution, not to the string."""
    depth, j = 0, i + 1
    inner_quote = ""
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if inner_quote:
            if c == inner_quote:
                inner_quote = ""
        elif depth and c in "'\"":
            inner_quote = c
        elif text.startswith("$(", j):
            depth += 1
            j += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == '"' and not depth:
            return text[i + 1 : j], j + 1
        j += 1
    return text[i + 1 :], len(text)


def _value(text: str, i: int) -> tuple[str, int]:
    if i >= len(text):
        return "", i
    c = text[i]
    if c == '"':
        return _double_quoted(text, i)
    if c == "'":
        end = text.find("'", i + 1)
        end = len(text) if end < 0 else end
        return text[i + 1 : end], end + 1
    if c == "(":
        end = text.find(")", i + 1)
        end = len(text) if end < 0 else end
        return text[i + 1 : end], end + 1
    j, depth = i, 0
    while j < len(text) and (depth or text[j] not in " \t\n;"):
        if text.startswith("$(", j):
            depth += 1
            j += 1
        elif text[j] == ")" and depth:
            depth -= 1
        j += 1
    return text[i:j], j


def ver_cut(version: str, start: int, end: int | None) -> str:
    """``ver_cut`` of Gentoo's eapi7-ver: components ``start``..``end`` (1-based; None: to the last) with
    the separators between them. Components are runs of digits or letters."""
    pieces = re.split(r"([^A-Za-z0-9]+|(?<=\d)(?=[A-Za-z])|(?<=[A-Za-z])(?=\d))", version)
    components, separators = pieces[0::2], pieces[1::2]
    last = len(components) if end is None else min(end, len(components))
    out = ""
    for n in range(start, last + 1):
        out += components[n - 1] + (separators[n - 1] if n < last else "")
    return out


def expand(value: str, env: Mapping[str, str]) -> str:
    """Substitute the variables of ``env`` and ``$(ver_cut ...)`` of ``env["PV"]``; leave the rest."""

    def var(m: re.Match[str]) -> str:
        name = m["braced"] or m["bare"]
        return env[name] if name in env else m.group()

    def cut(m: re.Match[str]) -> str:
        if "PV" not in env:
            return m.group()
        start = int(m["start"])
        if m["end"]:
            return ver_cut(env["PV"], start, int(m["end"]))
        return ver_cut(env["PV"], start, None if "-" in m.group() else start)

    text = _VER_CUT.sub(cut, value)
    return _REFERENCE.sub(var, text)


def assignments(text: str, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every variable the file assigns at a line start, expanded in file order (``+=`` appends)."""
    env: dict[str, str] = dict(given or {})
    out: dict[str, str] = {}
    pos = 0
    while (m := _START.search(text, pos)) is not None:
        raw, pos = _value(text, m.end())
        value = expand(raw, env)
        name = m["name"]
        if m["append"]:
            value = env.get(name, "") + value
        env[name] = out[name] = value
    return out


def inherits(text: str) -> frozenset[str]:
    """The eclasses named on ``inherit`` lines."""
    return frozenset(n for m in _INHERIT.finditer(text) for n in m["names"].split())


def brace_expand(word: str) -> list[str]:
    """``python3_{11..14}`` -> python3_11 ... python3_14 (numeric ranges and comma lists, one level)."""
    m = re.search(r"\{(?P<body>[^{}]*)\}", word)
    if m is None:
        return [word]
    body = m["body"]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    items = [str(n) for n in range(int(rng[1]), int(rng[2]) + 1)] if rng else body.split(",")
    head, tail = word[: m.start()], word[m.end() :]
    return [w for item in items for w in brace_expand(head + item + tail)]


def words(value: str) -> list[str]:
    """A value as bash splits an unquoted array or word list, with brace expansion."""
    tokens = (token.strip("'\"") for token in value.split())
    return [w for token in tokens if token for w in brace_expand(token)]
