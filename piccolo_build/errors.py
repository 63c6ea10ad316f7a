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


# Scripts and ebuilds of a flatcar/scripts checkout are tens of kilobytes; anything this big is not one.
MAX_TEXT_BYTES = 16 * 1024 * 1024


def read_text(path: Path) -> str:
    """The UTF-8 text of the regular file ``path`` (at most :data:`MAX_TEXT_BYTES`), or a one-line
    :class:`PiccoloError` naming it (a FIFO never blocks, binary content is no traceback)."""
    from piccolod.model import ModelError, decode_utf8, read_bounded

    try:
        return decode_utf8(read_bounded(path, MAX_TEXT_BYTES), str(path))
    except ModelError as exc:
        raise PiccoloError(str(exc)) from None
