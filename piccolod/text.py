"""Text that is safe to show: one line, no control characters, for terminals, logs and error messages.

Both programs print things they did not write (a key from a configuration file, what a Docker engine or a
disk answered, a file name). :func:`printable` is the one escaper they use, so a newline in such a value
cannot split a line and an ANSI escape cannot reach the terminal.
"""

from __future__ import annotations


def printable(text: str, limit: int | None = 1000) -> str:
    """``text`` with control and other unprintable characters escaped (a newline as ``\\n``, ESC as
    ``\\x1b``; backslashes stay as they are), and cut at ``limit`` characters (None: never cut)."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is None or len(out) <= limit:
        return out
    return f"{out[:limit]}... ({len(out) - limit} more characters)"


def one_line(text: str, limit: int = 300) -> str:
    """``text`` (say, what a program or a server answered) on one line of at most ``limit`` characters:
    runs of white space become one space. :func:`printable` still applies where it is shown."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
