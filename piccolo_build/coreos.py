"""The one edit we make to Flatcar's own overlay: a package added to ``coreos-base/coreos``'s RDEPEND.

That meta-package's RDEPEND *is* the production image's package set, and portage only rebuilds it
when its revision changes, which Flatcar does by renaming the ``coreos-0.0.1-rN.ebuild`` symlink to
``coreos-0.0.1.ebuild`` (docs/flatcar.md).

The real ebuild assigns RDEPEND many times (``RDEPEND=">=..."``, ``RDEPEND="${RDEPEND} ..."``,
``RDEPEND+="..."``), each a double-quoted, possibly multi-line value. :func:`add_rdepend` appends a
block of its own after the last assignment::

    # Piccolo OS: added by piccolo-build
    RDEPEND+="
        coreos-base/piccolo-base
    "

then bumps ``-rN`` to ``-r(N+1)``. It is idempotent: when any RDEPEND assignment already lists the
package, nothing is touched. A file with no RDEPEND assignment at all is an error, not a skip: the
image would silently lack the package.
"""

from __future__ import annotations

import re
from pathlib import Path

from piccolo_build.atomic import atomic_write
from piccolo_build.errors import PiccoloError, read_text
from piccolo_build.gentoo import KEY_RE, listed

EBUILD = "coreos-0.0.1.ebuild"
_REVISION = re.compile(r"coreos-0\.0\.1-r(\d+)\.ebuild")
# RDEPEND= or RDEPEND+= at the start of a line, then a double-quoted value (may span lines; the
# ebuild never has an escaped quote inside a dependency string).
_ASSIGNMENT = re.compile(r'^RDEPEND\+?="(?P<value>[^"]*)"', re.MULTILINE)
MARKER = "# Piccolo OS: added by piccolo-build"


def add_rdepend(ebuild_dir: Path, atom: str) -> bool:
    """Add ``atom`` (``category/name``) to the RDEPEND of ``ebuild_dir/coreos-0.0.1.ebuild`` and bump
    the revision symlink. Returns whether anything changed; raises :class:`PiccoloError` when the
    ebuild has no RDEPEND assignment or the revision symlinks are not as Flatcar keeps them."""
    if not KEY_RE.fullmatch(atom):
        raise PiccoloError(f"{atom!r}: expected a package as category/name")
    ebuild = ebuild_dir / EBUILD
    text = read_text(ebuild)
    assignments = list(_ASSIGNMENT.finditer(text))
    if not assignments:
        line = 1 + text[: text.find("RDEPEND")].count("\n") if "RDEPEND" in text else None
        where = f"{ebuild}:{line}" if line else str(ebuild)
        raise PiccoloError(
            f'{where}: RDEPEND: no RDEPEND="..." assignment found, cannot add {atom}',
            hint="is this Flatcar's coreos-base/coreos ebuild?",
        )
    if any(listed(m.group("value"), atom) for m in assignments):
        return False
    revisions = _revisions(ebuild_dir)
    end = assignments[-1].end()
    block = f'\n\n{MARKER}\nRDEPEND+="\n\t{atom}\n"'
    new_text = text[:end] + block + text[end:]
    atomic_write(ebuild, new_text.encode(), ebuild.stat().st_mode & 0o777)
    _bump(ebuild_dir, revisions)
    return True


def _revisions(ebuild_dir: Path) -> list[tuple[int, Path]]:
    found = sorted(
        (int(m.group(1)), p) for p in ebuild_dir.iterdir() if (m := _REVISION.fullmatch(p.name)) is not None
    )
    if len(found) > 1:
        names = ", ".join(p.name for _, p in found)
        raise PiccoloError(f"{ebuild_dir}: more than one revision of coreos-0.0.1: {names}")
    for _, path in found:
        if not path.is_symlink() or str(path.readlink()) != EBUILD:
            raise PiccoloError(f"{path}: expected a symlink to {EBUILD}")
    return found


def _bump(ebuild_dir: Path, revisions: list[tuple[int, Path]]) -> Path:
    """Rename the ``-rN`` symlink to ``-r(N+1)`` (create ``-r1`` if there is none)."""
    number = revisions[0][0] + 1 if revisions else 1
    new = ebuild_dir / f"coreos-0.0.1-r{number}.ebuild"
    tmp = ebuild_dir / f".{new.name}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(EBUILD)
    tmp.replace(new)
    for _, old in revisions:
        old.unlink()
    return new
