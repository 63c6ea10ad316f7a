"""``dev-python`` ebuilds for the agent's dependencies that Flatcar's portage-stable lacks.

One package per entry of the committed lock (:mod:`piccolo_build.lock`), under
``coreos-overlay/dev-python/<name>/``: ``<name>-<version>.ebuild`` (EAPI 8, ``distutils-r1`` +
``pypi``, stable keywords, docs/flatcar.md), a thin ``Manifest`` whose ``DIST`` line comes from the
lock's digests of the real sdist, and ``metadata.xml`` with the PyPI remote id. Everything is derived
from the lock, so rendering needs no network and the output only changes when the lock does.

What package metadata cannot say lives in :data:`TWEAKS` (C libraries linked against, build switches,
and patches: ``files/<patch>`` of the package, applied with ``PATCHES``, written for one version and
refused for any other). ``PYTHON_COMPAT`` is the board's Python (:attr:`TreeFacts.python_compat
<piccolo_build.tree.TreeFacts.python_compat>` of the checkout; :data:`~piccolo_build.gentoo.PYTHON_COMPAT`
without one). :func:`scan_extras` gives ``pkgcheck``'s stand-in repository what these ebuilds refer to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from piccolo_build.config import Board, BuildConfig
from piccolo_build.gentoo import ENV_DIR, OVERLAY, PYTHON_COMPAT, OverlayFile, atom_key
from piccolo_build.lock import Lock, LockedPackage, load_lock
from piccolo_build.render import render_template, template_bytes

CATEGORY = "dev-python"
DESCRIPTION_MAX = 80


@dataclass(frozen=True)
class Tweak:
    """Per-package facts the package index does not carry."""

    note: str = ""  # a comment above the dependencies saying why
    ext: bool = False  # builds a C extension (DISTUTILS_EXT=1)
    depend: tuple[str, ...] = ()  # libraries it links against: DEPEND and RDEPEND
    bdepend: tuple[str, ...] = ()  # build tools outside Python
    python_bdepend: tuple[str, ...] = ()  # Python packages the build runs that its metadata omits
    compile_env: tuple[tuple[str, str], ...] = ()
    patches: tuple[str, ...] = ()  # files under templates/dev-python/files/, applied in this order
    patched_version: str = ""  # the upstream version the patches were written for


TWEAKS = {
    "pyyaml": Tweak(
        note="Pure-Python build: the image has no libyaml, and policy files are small.",
        compile_env=(("PYYAML_FORCE_LIBYAML", "0"),),
    ),
    "tpm2-pytss": Tweak(
        note="cffi bindings to libtss2-esys (app-crypt/tpm2-tss); cffi runs on the build host too.",
        ext=True,
        depend=("app-crypt/tpm2-tss:=",),
        bdepend=("virtual/pkgconfig",),
        python_bdepend=("dev-python/cffi",),
        # setup.py preprocesses headers with the host's cpp in its default C dialect; GCC 15 (the
        # SDK from alpha-4790 on) defaults to C23, which pycparser cannot read (docs/flatcar.md).
        patches=("tpm2-pytss-2.3.0-preprocess-with-cc-c99.patch",),
        patched_version="2.3.0",
    ),
}
# Build requirements that derive the version from version control; an sdist has none, so tell them.
_SCM_VERSIONED = {"setuptools-scm", "hatch-vcs"}


def pypi_sdist_name(project: str, version: str) -> str:
    """The file name the ``pypi`` eclass puts in ``SRC_URI`` (its ``_pypi_normalize_name``)."""
    return f"{re.sub(r'[._-]+', '_', project).lower()}-{version}.tar.gz"


def description(pkg: LockedPackage) -> str:
    """The summary as a Gentoo DESCRIPTION: one line, no final period, at most 80 characters."""
    text = " ".join(pkg.summary.replace('"', "'").split()).rstrip(".")
    text = re.sub(r"[$`\\!]", "", text)
    if len(text) > DESCRIPTION_MAX:
        text = text[: DESCRIPTION_MAX - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text or pkg.name


def tweak_for(pkg: LockedPackage) -> Tweak:
    """The package's tweak; its patches only for the version they were written for."""
    tweak = TWEAKS.get(pkg.name, Tweak())
    if tweak.patches and pkg.version != tweak.patched_version:
        raise ValueError(
            f"{pkg.name}: the lock pins {pkg.version}, but its patches ({', '.join(tweak.patches)}) were "
            f"written for {tweak.patched_version}: check whether they are still needed and update TWEAKS "
            "in piccolo_build/deps.py"
        )
    return tweak


def context(cfg: BuildConfig, pkg: LockedPackage, python_compat: str = PYTHON_COMPAT) -> dict[str, Any]:
    if not re.fullmatch(r"[a-z0-9-]+", pkg.build_backend):
        raise ValueError(
            f"{pkg.name}: build_backend {pkg.build_backend!r} is not a DISTUTILS_USE_PEP517 value"
        )
    tweak = tweak_for(pkg)
    compile_env = list(tweak.compile_env)
    if any(atom_key(a).split("/")[1] in _SCM_VERSIONED for a in pkg.bdepend):
        compile_env.append(("SETUPTOOLS_SCM_PRETEND_VERSION", pkg.version))
    # Modern sdists carry the normalised name; older ones keep the project's spelling.
    stem = pkg.filename.removesuffix(f"-{pkg.version}.tar.gz")
    normalised = pypi_sdist_name(pkg.name, pkg.version) == pkg.filename
    homepages = [f"https://pypi.org/project/{pkg.pypi_name}/"]
    if pkg.homepage.rstrip("/") not in (h.rstrip("/") for h in homepages):
        homepages.append(pkg.homepage)
    github = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?", pkg.homepage)
    return {
        "pkg": pkg,
        "github": github.group(1) if github else None,
        "tweak": tweak,
        "compile_env": sorted(compile_env),
        "pypi_pn": None if normalised else stem,
        "python_compat": python_compat,
        "description": description(pkg),
        "homepages": homepages,
        "keywords": " ".join(sorted(b.arch for b in Board)),
    }


def package_files(
    cfg: BuildConfig, pkg: LockedPackage, python_compat: str = PYTHON_COMPAT
) -> list[OverlayFile]:
    base = OVERLAY / CATEGORY / pkg.name
    ctx = context(cfg, pkg, python_compat)
    patches = [
        OverlayFile(base / "files" / name, template_bytes(f"{CATEGORY}/files/{name}"))
        for name in ctx["tweak"].patches
    ]
    # A C extension's build runs pkg-config: the board's, through a per-package profile.bashrc hook.
    env = (
        [OverlayFile(ENV_DIR / pkg.atom, render_template("dev-python/env.j2", ctx))]
        if ctx["tweak"].ext
        else []
    )
    return [
        *patches,
        *env,
        OverlayFile(
            base / f"{pkg.name}-{pkg.gentoo_version}.ebuild", render_template("dev-python/ebuild.j2", ctx)
        ),
        OverlayFile(base / "Manifest", (pkg.dist_line() + "\n").encode()),
        OverlayFile(base / "metadata.xml", render_template("dev-python/metadata.xml.j2", ctx)),
    ]


def dependency_files(
    cfg: BuildConfig, lock: Lock | None = None, python_compat: str = PYTHON_COMPAT
) -> list[OverlayFile]:
    """Every dependency package from the lock (default: the lock in use, ``lock.lock_path()``)."""
    lock = lock if lock is not None else load_lock()
    files = [f for pkg in lock.packages for f in package_files(cfg, pkg, python_compat)]
    return sorted(files, key=lambda f: f.path)


def external_atoms(lock: Lock) -> list[str]:
    """``category/name`` of every package our dependency ebuilds need from portage-stable."""
    ours = {p.atom for p in lock.packages}
    keys = {atom_key(a) for p in lock.packages for a in (*p.rdepend, *p.bdepend)}
    for tweak in (TWEAKS.get(p.name, Tweak()) for p in lock.packages):
        keys |= {atom_key(a) for a in (*tweak.depend, *tweak.bdepend)}
    return sorted(keys - ours)


# --- what pkgcheck's stand-in repository needs for these ebuilds --------------------------------

_PYPI_ECLASS = """\
# @ECLASS: pypi.eclass
# @MAINTAINER:
# os@piccolo.space
# @SUPPORTED_EAPIS: 8
# @BLURB: stand-in for the scan: SRC_URI and S as the real eclass sets them
# @DESCRIPTION:
# Stand-in.

# @ECLASS_VARIABLE: PYPI_PN
# @PRE_INHERIT
# @DESCRIPTION:
# The project name on PyPI.
: "${PYPI_PN:=${PN}}"

# @ECLASS_VARIABLE: PYPI_NO_NORMALIZE
# @PRE_INHERIT
# @DEFAULT_UNSET
# @DESCRIPTION:
# Keep the project's spelling in the file name.

_pypi_name=${PYPI_PN}
[[ ${PYPI_NO_NORMALIZE} ]] || _pypi_name=${PYPI_PN//[._-]/_}
[[ ${PYPI_NO_NORMALIZE} ]] || _pypi_name=${_pypi_name,,}
SRC_URI="https://files.pythonhosted.org/packages/source/${PYPI_PN::1}/${PYPI_PN}/${_pypi_name}-${PV}.tar.gz"
S="${WORKDIR}/${_pypi_name}-${PV}"
unset _pypi_name
"""

_STAND_IN = """\
# Stand-in for the scan: a package the real build takes from Flatcar's portage-stable.

EAPI=8
{inherit}
DESCRIPTION="Stand-in package for the scan"
{homepage}S="${{WORKDIR}}"
{license}SLOT="0"
KEYWORDS="amd64 arm64"
"""
# High enough to satisfy any lower bound the lock records.
STAND_IN_VERSION = "999"


def scan_extras(ours: Iterable[str], lock: Lock | None = None) -> dict[str, bytes]:
    """Repository-relative files the scan repository needs for the dependency ebuilds: the ``pypi``
    eclass stand-in, stand-in packages for portage-stable atoms, and the licences they use."""
    lock = lock if lock is not None else load_lock()
    if not lock.packages:
        return {}
    have = set(ours)
    out = {"eclass/pypi.eclass": _PYPI_ECLASS.encode()}
    for key in external_atoms(lock):
        if key in have:
            continue
        name = key.split("/")[1]
        inherit = "\ninherit distutils-r1\n" if key.startswith(f"{CATEGORY}/") else ""
        # Virtual packages have neither HOMEPAGE nor LICENSE (pkgcheck BadHomepage/UnnecessaryLicense).
        virtual = key.startswith("virtual/")
        text = _STAND_IN.format(
            inherit=inherit,
            homepage="" if virtual else 'HOMEPAGE="https://piccolo.space/"\n',
            license="" if virtual else 'LICENSE="Apache-2.0"\n',
        )
        out[f"{key}/{name}-{STAND_IN_VERSION}.ebuild"] = text.encode()
    for name in sorted({lic for p in lock.packages for lic in p.license.split()}):
        out[f"licenses/{name}"] = f"{name} (stand-in text for the scan)\n".encode()
    return out


__all__ = ["TWEAKS", "dependency_files", "external_atoms", "package_files", "scan_extras"]
