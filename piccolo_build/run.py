"""The one place in piccolo_build that runs external programs (through the ``sh`` library).

argv lists only (never a shell string), ``check=True`` by default, a small sanitised environment, and
a failed or missing program turned into a readable :class:`~piccolo_build.errors.PiccoloError`
(exit 127 becomes "X not found"). Everything else in piccolo_build calls :func:`run`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from piccolo_build.errors import PiccoloError, StepFailed

# Variables passed through to children; anything else must be given explicitly.
PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TERM",
    "TMPDIR",
    "USER",
    "GNUPGHOME",
    "DOCKER_HOST",
    "SSH_AUTH_SOCK",
)


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def which(program: str, env: Mapping[str, str] | None = None) -> str | None:
    return shutil.which(program, path=(env or base_env()).get("PATH"))


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run ``argv`` to completion and capture its output.

    ``env`` is added to the sanitised base environment. With ``check``, a non-zero exit raises
    :class:`StepFailed` carrying the program's exit code and the tail of its stderr.
    """
    import sh

    args = tuple(str(a) for a in argv)
    full_env = base_env(env)
    exe = which(args[0], full_env) if "/" not in args[0] else args[0]
    if exe is None or not Path(exe).exists():
        raise PiccoloError(f"{args[0]} not found", hint=f"install {args[0]} or put it on PATH", exit_code=127)
    try:
        proc = sh.Command(exe)(
            *args[1:],
            _cwd=str(cwd) if cwd else None,
            _env=full_env,
            _in=input,
            _ok_code=list(range(256)),
            _timeout=timeout,
            _return_cmd=True,
            _decode_errors="replace",
        )
    except sh.TimeoutException:
        raise StepFailed(f"{args[0]} timed out after {timeout:g}s", exit_code=124) from None
    result = Completed(
        args, proc.exit_code, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    )
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise StepFailed(
            f"{' '.join(args)} failed with exit code {result.returncode}"
            + (f": {' / '.join(tail)}" if tail else ""),
            exit_code=result.returncode,
        )
    return result
