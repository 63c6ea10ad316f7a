"""The third edit of Flatcar's checkout: the image trusts ``release.update_key`` and nothing else.

How flatcar/scripts chooses the key (the same at lts-4081, stable-4230, stable-4593, beta-4757 and
alpha-4790): update_engine checks payloads against ``/usr/share/update_engine/update-payload-key.pub.pem``
(``payload_processor.cc``) and skips the check when that file is missing. The file comes from
``coreos-base/coreos-au-key`` (an RDEPEND of ``coreos-base/update_engine``), whose ebuild installs,
``if use official``, ``files/official-v2.pub.pem`` as that file, and otherwise Flatcar's *development*
key pair: ``developer-v1.pub.pem`` and its private half ``developer-v1.key.pem`` (as
``update-payload-key.key.pem``, so an unofficial image even carries the private key). The development
key's private half is published in coreos-overlay. ``build_image``'s ``generate_update``
(``build_library/build_image_util.sh``) signs ``flatcar_test_update.gz`` with the SDK's own copy of it.
Flatcar's official builds set ``COREOS_OFFICIAL=1`` and USE=official; our builds are unofficial.

So we use the tree's own mechanism, for the board only (:func:`set_update_key`):

- ``files/official-v2.pub.pem`` becomes our public key (PEM SubjectPublicKeyInfo, as update_engine
  reads it);
- ``coreos-base/coreos-au-key official`` is added to ``profiles/coreos/targets/generic/package.use``,
  which the board profiles ``coreos/<arch>/generic`` inherit and the SDK's ``coreos/<arch>/sdk`` does
  not: the SDK keeps its development keys (``cros_host``; the ebuild's REQUIRED_USE forbids both),
  and generate_update keeps working;
- a revision symlink ``coreos-au-key-<version>-r<N>.ebuild``, N taken from the key's digest, so
  portage builds the package from the edited tree instead of taking Flatcar's binary package (which
  carries Flatcar's key) or one an earlier build made with another key.

Payloads are then signed with the matching private key in the release step, outside the image build
(:mod:`piccolo_build.payload`). Whether the image got our package is checked on what build_image
reports (:func:`check_image_reports`). Every edit is idempotent; a tree whose ebuild no longer installs
``official-v2.pub.pem`` under ``use official`` is an error, never a silent skip.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from piccolo_build.atomic import atomic_write
from piccolo_build.errors import PiccoloError, read_text
from piccolo_build.gentoo import COREOS_OVERLAY

PACKAGE = "coreos-base/coreos-au-key"
PACKAGE_DIR = Path(COREOS_OVERLAY) / PACKAGE
KEY_FILE = "official-v2.pub.pem"  # what the ebuild installs under USE=official
INSTALLED_KEY = "/usr/share/update_engine/update-payload-key.pub.pem"
INSTALLED_PRIVATE_KEY = "update-payload-key.key.pem"  # what it installs without official
PACKAGE_USE = Path(COREOS_OVERLAY) / "profiles" / "coreos" / "targets" / "generic" / "package.use"
USE_LINE = f"{PACKAGE} official"
MARKER = "# Piccolo OS: the image trusts release.update_key only (added by piccolo-build)"
_EBUILD = re.compile(r"coreos-au-key-(?P<version>\d+(?:\.\d+)*)\.ebuild")
_REVISION = re.compile(r"coreos-au-key-(?P<version>\d+(?:\.\d+)*)-r(?P<rev>\d+)\.ebuild")
# The ebuild's own choice: under `if use official; then` it installs official-v2.pub.pem as the key.
_OFFICIAL = re.compile(
    r"if\s+use\s+official\s*;\s*then\s*\n\s*newins\s+\"\$\{FILESDIR\}/official-v2\.pub\.pem\"\s+"
    r"update-payload-key\.pub\.pem\s*\n\s*else"
)
HINT = "has flatcar/scripts changed how coreos-au-key chooses the update key? (docs/release.md)"


def revision(pem: bytes) -> int:
    """The package revision for a key: from its digest, so another key is another package version."""
    return int(hashlib.sha256(pem).hexdigest()[:6], 16) + 1


def ebuild(scripts_dir: Path) -> Path:
    """The tree's one coreos-au-key ebuild (a regular file; revisions of ours are symlinks to it)."""
    directory = scripts_dir / PACKAGE_DIR
    found = sorted(p for p in directory.glob("coreos-au-key-*.ebuild") if _EBUILD.fullmatch(p.name))
    regular = [p for p in found if not p.is_symlink()]
    if len(regular) != 1:
        raise PiccoloError(f"{directory}: expected one coreos-au-key ebuild, found {len(regular)}", hint=HINT)
    return regular[0]


def set_update_key(scripts_dir: Path, pem: bytes) -> tuple[bool, str]:
    """Make the board's coreos-au-key install ``pem`` as update_engine's key and nothing else.
    Returns (whether anything changed, the package version the image must get)."""
    source = ebuild(scripts_dir)
    text = read_text(source)
    if not re.search(r"^IUSE=\"[^\"]*\bofficial\b", text, re.M) or not _OFFICIAL.search(text):
        raise PiccoloError(f"{source}: does not install {KEY_FILE} as the key under USE=official", hint=HINT)
    changed = False
    key = source.parent / "files" / KEY_FILE
    if not key.is_file():
        raise PiccoloError(f"{key}: missing", hint=HINT)  # the tree's own official key file
    if key.read_bytes() != pem:
        atomic_write(key, pem)
        changed = True
    changed |= _add_use(scripts_dir / PACKAGE_USE)
    match = _EBUILD.fullmatch(source.name)
    assert match is not None
    version = f"{match['version']}-r{revision(pem)}"
    changed |= _link_revision(source, version)
    return changed, version


def _add_use(package_use: Path) -> bool:
    text = read_text(package_use)
    if any(line.split() == USE_LINE.split() for line in text.splitlines()):
        return False
    atomic_write(package_use, f"{text.rstrip(chr(10))}\n\n{MARKER}\n{USE_LINE}\n".encode())
    return True


def _link_revision(source: Path, version: str) -> bool:
    """``coreos-au-key-<version>.ebuild`` as a symlink to the tree's ebuild; other revisions go."""
    wanted = source.parent / f"coreos-au-key-{version}.ebuild"
    stale = [p for p in source.parent.iterdir() if _REVISION.fullmatch(p.name) and p != wanted]
    for path in stale:
        if not path.is_symlink():
            raise PiccoloError(f"{path}: a revision that is not ours (expected a symlink)", hint=HINT)
        path.unlink()
    if wanted.is_symlink() and wanted.readlink() == Path(source.name):
        return bool(stale)
    tmp = source.parent / f".{wanted.name}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(source.name)
    tmp.replace(wanted)
    return True


def reset(scripts_dir: Path) -> bool:
    """Without ``release.update_key``: undo an earlier build's edits, so the checkout chooses the key
    as the tag does (a checkout of the same tag keeps edited files). Returns whether anything changed."""
    from piccolo_build.run import run

    paths = [str(PACKAGE_DIR), str(PACKAGE_USE)]
    ours = [
        p
        for p in (scripts_dir / PACKAGE_DIR).glob("*.ebuild")
        if _REVISION.fullmatch(p.name) and p.is_symlink()
    ]
    status = run(["git", "status", "--porcelain", "--", *paths], cwd=scripts_dir).stdout.strip()
    if not status and not ours:
        return False
    for path in ours:
        path.unlink()
    run(["git", "checkout", "HEAD", "--", *paths], cwd=scripts_dir)
    return True


def check_image_reports(images: Path, version: str) -> str:
    """What build_image reports about the image in ``images``: its package list must name our
    coreos-au-key, and its file list (when there is one) no private update key. Returns a summary."""
    packages = images / "flatcar_production_image_packages.txt"
    if not packages.is_file():
        raise PiccoloError(
            f"{packages}: missing; cannot tell which update key the image trusts",
            hint="build_image writes it next to the image",
        )
    installed = sorted(
        line.split("::")[0].strip()
        for line in read_text(packages).splitlines()
        if line.startswith(f"{PACKAGE}-")
    )
    wanted = f"{PACKAGE}-{version}"
    if installed != [wanted]:
        raise PiccoloError(
            f"{packages}: the image has {' '.join(installed) or 'no coreos-au-key'}, not {wanted}: it would "
            "not trust release.update_key",
            hint="a binary package of another coreos-au-key won: remove it from the SDK container's "
            "packages and build again from build-packages",
        )
    contents = images / "flatcar_production_image_contents.txt"
    if contents.is_file() and INSTALLED_PRIVATE_KEY in read_text(contents):
        raise PiccoloError(
            f"{contents}: the image carries {INSTALLED_PRIVATE_KEY}, a private update key",
            hint="coreos-au-key was built without USE=official: run the build again from update-key",
        )
    return f"{wanted} in the image"
