"""The SDK version a flatcar/scripts checkout pins: ``FLATCAR_SDK_VERSION`` in its ``version.txt``.

flatcar/scripts keeps ``sdk_container/.repo/manifests/version.txt``, a file of shell assignments that
its SDK scripts ``source`` (docs/flatcar.md)::

    FLATCAR_VERSION=4081.2.10
    FLATCAR_VERSION_ID=4081.2.10
    FLATCAR_BUILD_ID=""
    FLATCAR_SDK_VERSION=4081.1.0

A development build carries a build id after a ``+`` (``4230.0.0+nightly-20250101-2100``), in the SDK
version too. ``run_sdk_container`` without ``-V`` uses ``FLATCAR_SDK_VERSION`` and the image tag
:func:`piccolo_build.context.docker_tag` derives from it, so when ``flatcar.sdk_version`` is not set
this file says which SDK image the build needs. It is read, never sourced.
"""

from __future__ import annotations

import re
from pathlib import Path

from piccolo_build.errors import PiccoloError

SDK_KEY = "FLATCAR_SDK_VERSION"
VERSION_KEY = "FLATCAR_VERSION"
_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_VERSION = re.compile(r"\d+\.\d+\.\d+(?:\+[A-Za-z0-9._-]+)?")


def read_value(path: Path, key: str) -> str:
    """The (unquoted) value of ``key`` in ``path``; a missing file, key or malformed value is a one-line
    :class:`PiccoloError` naming the file (and line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PiccoloError(f"{path}: not UTF-8 text", hint="is this checkout flatcar/scripts?") from None
    except OSError as exc:
        raise PiccoloError(
            f"{path}: cannot read the checkout's version file: {exc.strerror or exc}",
            hint="is the scripts checkout flatcar/scripts? or set flatcar.sdk_version",
        ) from None
    value: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        m = _ASSIGNMENT.fullmatch(line)
        if m and m[1] == key:
            value = (number, m[2].strip())  # the last assignment wins, as in the shell
    if value is None:
        raise PiccoloError(f"{path}: {key}: not set", hint="or set flatcar.sdk_version")
    number, text = value
    unquoted = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else text
    if not _VERSION.fullmatch(unquoted):
        raise PiccoloError(
            f"{path}:{number}: {key}: {text!r} is not a version (NNNN.N.N[+BUILD_ID])",
            hint="or set flatcar.sdk_version",
        )
    return unquoted


def is_version(text: str) -> bool:
    """Whether ``text`` is a Flatcar version, ``NNNN.N.N`` with an optional ``+BUILD_ID``."""
    return _VERSION.fullmatch(text) is not None


def read_sdk_version(path: Path) -> str:
    """``FLATCAR_SDK_VERSION`` from ``path`` (see :func:`read_value`)."""
    return read_value(path, SDK_KEY)


def sdk_version_or_none(path: Path) -> str | None:
    """Like :func:`read_sdk_version`, but None when the file cannot say (for reports, not checks)."""
    try:
        return read_sdk_version(path)
    except PiccoloError:
        return None
