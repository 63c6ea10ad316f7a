"""A minimal standalone ebuild repository around the rendered overlay, for ``pkgcheck scan``.

``pkgcheck`` needs a repository it can load: ``metadata/layout.conf`` (no masters, thin manifests),
``profiles/repo_name``, ``categories``, ``arch.list``, ``licenses/`` and every eclass the ebuilds
inherit. The real eclasses live in Flatcar's portage-stable; here they are small stand-ins that define
the functions and variables our ebuilds use, so the scan judges our ebuilds and not Gentoo's eclasses.
Python dependencies that the overlay does not carry get one-line stand-in packages so dependency
checks resolve.

Every package brings its own ``Manifest`` (the agent's is rendered from its reproducible sdist). Files
the dependency ebuilds need come from :func:`piccolo_build.deps.scan_extras`. This scan judges our
ebuilds alone; :mod:`piccolo_build.treecheck` scans them inside Flatcar's real repositories.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from piccolo_build import layout
from piccolo_build.config import FREE_LICENSES, Board, BuildConfig
from piccolo_build.deps import scan_extras
from piccolo_build.gentoo import OVERLAY, OverlayFile, package_key, python_targets
from piccolo_build.lock import load_lock
from piccolo_build.overlay import python_dependencies

# The stand-in python-r1 targets are exactly what our ebuilds declare.
PYTHON_TARGETS = python_targets()

_ECLASSES = {
    "systemd": """\
# @ECLASS: systemd.eclass
# @MAINTAINER:
# os@piccolo.space
# @BLURB: stand-in for the scan: the functions our ebuilds call
# @DESCRIPTION:
# Stand-in.

# @FUNCTION: systemd_dounit
# @DESCRIPTION:
# Install units into /usr/lib/systemd/system.
systemd_dounit() { :; }

# @FUNCTION: systemd_enable_service
# @DESCRIPTION:
# Make the .wants/ link at build time.
systemd_enable_service() { :; }

# @FUNCTION: systemd_get_systemunitdir
# @DESCRIPTION:
# The unit directory.
systemd_get_systemunitdir() { echo /usr/lib/systemd/system; }
""",
    "tmpfiles": """\
# @ECLASS: tmpfiles.eclass
# @MAINTAINER:
# os@piccolo.space
# @BLURB: stand-in for the scan: the functions our ebuilds call
# @DESCRIPTION:
# Stand-in.

# @FUNCTION: dotmpfiles
# @DESCRIPTION:
# Install tmpfiles.d files.
dotmpfiles() { :; }

# @FUNCTION: newtmpfiles
# @DESCRIPTION:
# Install a tmpfiles.d file under a new name.
newtmpfiles() { :; }

# @FUNCTION: tmpfiles_process
# @DESCRIPTION:
# Apply tmpfiles.d files.
tmpfiles_process() { :; }
""",
    "distutils-r1": """\
# @ECLASS: distutils-r1.eclass
# @MAINTAINER:
# os@piccolo.space
# @SUPPORTED_EAPIS: 8
# @BLURB: stand-in for the scan: the variables and functions our ebuilds use
# @DESCRIPTION:
# Stand-in.

# @ECLASS_VARIABLE: DISTUTILS_USE_PEP517
# @PRE_INHERIT
# @DESCRIPTION:
# Build backend.

# @ECLASS_VARIABLE: PYTHON_USEDEP
# @OUTPUT_VARIABLE
# @DESCRIPTION:
# USE dependency on the Python targets.

# @ECLASS_VARIABLE: PYTHON_DEPS
# @OUTPUT_VARIABLE
# @DESCRIPTION:
# Dependency on the Python interpreters.

IUSE="@IUSE@"
REQUIRED_USE="|| ( @IUSE@ )"
PYTHON_USEDEP="@USEDEP@"
PYTHON_DEPS=""
RDEPEND=""
BDEPEND=""

# @FUNCTION: distutils-r1_python_install_all
# @DESCRIPTION:
# Install the common files.
distutils-r1_python_install_all() { :; }

# @FUNCTION: distutils-r1_src_install
# @DESCRIPTION:
# Install phase.
distutils-r1_src_install() { python_install_all; }

EXPORT_FUNCTIONS src_install
""",
}


_STAND_IN_EBUILD = """\
# Stand-in for the scan.

EAPI=8

inherit distutils-r1

DESCRIPTION="Stand-in Python package for the scan"
HOMEPAGE="https://piccolo.space/"
S="${WORKDIR}"
LICENSE="Apache-2.0"
SLOT="0"
KEYWORDS="amd64 arm64"
"""


_STAND_IN_BASE_EBUILD = """\
# Stand-in for the scan.

EAPI=8

DESCRIPTION="Stand-in base image package for the scan"
HOMEPAGE="https://piccolo.space/"
S="${WORKDIR}"
LICENSE="Apache-2.0"
SLOT="0"
KEYWORDS="amd64 arm64"
"""


def _write(root: Path, rel: str | PurePosixPath, text: str | bytes) -> None:
    path = root / str(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def build_scan_repo(cfg: BuildConfig, files: Iterable[OverlayFile], root: Path) -> list[str]:
    """Write the repository under ``root``; returns our package keys (``category/name``)."""
    packages = [f for f in files if package_key(f) is not None]  # not the per-package bashrc files
    for f in files:
        if f.path.parts[0] == "licenses":
            _write(root, f.path, f.content)
    for f in packages:
        _write(root, f.path.relative_to(OVERLAY), f.content)
    ours = sorted({key for f in packages if (key := package_key(f)) is not None})
    stand_ins = [dep for dep in python_dependencies(load_lock().agent) if dep not in ours]
    for dep in stand_ins:
        name = dep.split("/")[1]
        _write(root, f"{dep}/{name}-1.ebuild", _STAND_IN_EBUILD)
    for dep in layout.BASE_RUNTIME_DEPENDENCIES:  # Flatcar's own packages, as stand-ins too
        _write(root, f"{dep}/{dep.split('/')[1]}-1.ebuild", _STAND_IN_BASE_EBUILD)
    dependency_ebuilds = [key for key in ours if key.startswith("dev-python/")]
    for rel, content in sorted((scan_extras(ours) if dependency_ebuilds else {}).items()):
        if not (root / rel).exists():
            _write(root, rel, content)
    iuse = " ".join(f"python_targets_{t}" for t in PYTHON_TARGETS)
    usedep = ",".join(f"python_targets_{t}(-)?" for t in PYTHON_TARGETS)
    for name, text in _ECLASSES.items():
        _write(root, f"eclass/{name}.eclass", text.replace("@IUSE@", iuse).replace("@USEDEP@", usedep))
    special = {"eclass", "licenses", "metadata", "profiles"}
    categories = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in special)
    _write(root, "metadata/layout.conf", "masters =\nthin-manifests = true\nsign-manifests = false\n")
    _write(root, "profiles/repo_name", "piccolo-scan\n")
    _write(root, "profiles/categories", "".join(f"{c}\n" for c in categories))
    _write(root, "profiles/arch.list", "".join(f"{b.arch}\n" for b in Board))
    _write(
        root, "profiles/desc/python_targets.desc", "".join(f"{t} - Build with {t}\n" for t in PYTHON_TARGETS)
    )
    for lic in sorted({"Apache-2.0", cfg.package.license} & FREE_LICENSES):
        _write(root, f"licenses/{lic}", f"{lic} (stand-in text for the scan)\n")
    return ours
