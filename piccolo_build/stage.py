"""``piccolo-build stage DIR``: what the ebuilds install, laid out as trees a machine can boot.

From the install layout (:mod:`piccolo_build.layout`), the same table that renders the ebuilds' install
phases:

- ``DIR/base/``: what ``coreos-base/piccolo-base`` puts into the base image (``usr/...``): the guard,
  update-engine's drop-in, ``piccolod-start.service`` and its ``multi-user.target.wants/`` link;
- ``DIR/sysext/``: the piccolod system extension tree: the agent's unit, its ``.wants/`` link, tmpfiles,
  vendor policy, and ``usr/lib/extension-release.d/extension-release.piccolod``. Flatcar's
  ``build_sysext`` writes ``ID=flatcar``, ``VERSION_ID=<OS version>`` and ``ARCHITECTURE=``; a staged
  tree is for trying a change on any Flatcar release, so it says ``SYSEXT_LEVEL=1.0`` (which Flatcar's
  os-release has) unless ``--version-id`` pins an OS version;
- ``/usr/bin/piccolod`` in the sysext: on the device ``distutils-r1`` installs the agent with its
  interpreter; a staged tree gets a launcher that runs ``PYTHON -m piccolod`` with ``--pythonpath``
  (and ``--env``) instead, so a developer or the test rig can boot it without the SDK;
- with ``--raw``: ``DIR/piccolod.raw``, the squashfs image (``mksquashfs -all-root``, as Flatcar's).

DIR must be new, empty, or an earlier stage (it holds ``.piccolo-stage`` as a regular file): the rule
``render`` keeps for its own output, by the same code. It is replaced whole, in one step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from piccolo_build import layout
from piccolo_build.atomic import replace_dir
from piccolo_build.bundle import SYSEXT_NAME
from piccolo_build.config import BuildConfig
from piccolo_build.errors import PiccoloError
from piccolo_build.overlay import context, layout_content
from piccolo_build.quoting import bash_word
from piccolo_build.render import Marker, claim

MARKER = PurePosixPath(".piccolo-stage")
STAGE_MARKER = Marker(MARKER, b"Written by piccolo-build stage: replaced whole by the next stage.\n")
EXTENSION_RELEASE = PurePosixPath("/usr/lib/extension-release.d") / f"extension-release.{SYSEXT_NAME}"
LAUNCHER = PurePosixPath("/usr/bin/piccolod")
# systemd.unit(5) architecture names, as build_sysext maps Flatcar's boards.
ARCHITECTURES = {"amd64-usr": "x86-64", "arm64-usr": "arm64"}


@dataclass(frozen=True)
class Launcher:
    """How the staged ``/usr/bin/piccolod`` runs the agent."""

    python: str
    pythonpath: str = ""
    env: Mapping[str, str] | None = None


def extension_release(*, version_id: str | None, architecture: str | None) -> bytes:
    lines = ["ID=flatcar", f"VERSION_ID={version_id}" if version_id else "SYSEXT_LEVEL=1.0"]
    if architecture:
        lines.append(f"ARCHITECTURE={architecture}")
    return ("\n".join(lines) + "\n").encode()


def launcher_script(launcher: Launcher) -> bytes:
    env = {**(launcher.env or {})}
    if launcher.pythonpath:
        env["PYTHONPATH"] = launcher.pythonpath
    exports = "".join(f"export {k}={bash_word(v)}\n" for k, v in sorted(env.items()))
    return (
        "#!/bin/sh\n# A staged piccolod (piccolo-build stage); on the device distutils-r1 installs it.\n"
        f'{exports}exec {bash_word(launcher.python)} -m piccolod "$@"\n'
    ).encode()


def _put(root: Path, dest: PurePosixPath, content: bytes, mode: int) -> None:
    path = root / dest.relative_to("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)


def lay_out(
    cfg: BuildConfig,
    package: layout.Package,
    root: Path,
    content: Callable[[layout.Entry], bytes] | None = None,
) -> list[PurePosixPath]:
    """Install ``package``'s entries of the layout under ``root`` as the ebuild would; the paths.

    ``content`` gives each file's bytes (default: rendered from ``cfg``; ``check`` takes them from the
    overlay it checks)."""
    ctx = context(cfg)
    done = []
    for e in layout.entries(package):
        if e.how is layout.How.ENABLE:
            link = root / e.dest.relative_to("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(f"../{e.dest.name}")
        else:
            data = content(e) if content is not None else layout_content(cfg, e, ctx)
            _put(root, e.dest, data, e.mode)
        done.append(e.dest)
    return done


def stage(
    cfg: BuildConfig,
    output: Path,
    launcher: Launcher,
    *,
    version_id: str | None = None,
    architecture: str | None = None,
    raw: bool = False,
) -> Path:
    """Write ``output/base`` and ``output/sysext`` (and ``output/piccolod.raw`` with ``raw``).

    ``output`` is claimed exactly as ``render`` claims its own (:func:`piccolo_build.render.claim`) and
    replaced in one step (:func:`piccolo_build.atomic.replace_dir`)."""
    hint = "stage into a new or empty directory, or into an earlier stage"
    output = claim(output, STAGE_MARKER, what="stage", hint=hint)
    arch = architecture if architecture is not None else ARCHITECTURES.get(str(cfg.boards[0]))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        (tmp / MARKER).write_bytes(STAGE_MARKER.text)
        lay_out(cfg, layout.Package.BASE, tmp / "base")
        sysext = tmp / "sysext"
        lay_out(cfg, layout.Package.AGENT, sysext)
        _put(sysext, EXTENSION_RELEASE, extension_release(version_id=version_id, architecture=arch), 0o644)
        _put(sysext, LAUNCHER, launcher_script(launcher), 0o755)
        if raw:
            squash(sysext, tmp / f"{SYSEXT_NAME}.raw")
        for d, _dirs, _files in os.walk(tmp):
            Path(d).chmod(0o755)
        replace_dir(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return output


def squash(tree: Path, image: Path, extra: Sequence[str] = ()) -> Path:
    """``mksquashfs TREE IMAGE -all-root -noappend``: a sysext image as Flatcar's build makes one."""
    from piccolo_build.run import run, which

    if which("mksquashfs") is None:
        raise PiccoloError("mksquashfs not found", hint="apt-get install squashfs-tools")
    run(["mksquashfs", tree, image, "-all-root", "-noappend", "-quiet", *extra])
    return image
