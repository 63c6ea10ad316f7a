"""The one exception type users see: a one-line message, a hint and an exit code."""

from __future__ import annotations

from pathlib import Path


class PiccoloError(Exception):
    """A user-facing failure. The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class StepFailed(PiccoloError):
    """An external build step failed; carries the step's own exit code."""

    exit_code = 1


def read_text(path: Path) -> str:
    """The file's text, or a one-line :class:`PiccoloError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PiccoloError(f"{path}: cannot read: {exc.strerror or exc}") from None
