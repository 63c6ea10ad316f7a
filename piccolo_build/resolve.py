"""Refreshing the lock from PyPI: ``piccolo-build lock``.

Starting from the agent's requirements (pyproject's ``agent`` extra), every requirement that Flatcar's
portage-stable cannot satisfy is resolved to the newest final, non-yanked release that satisfies it
and has a source distribution (PyPI's JSON API); the sdist is downloaded, checked against PyPI's
SHA-256, and read (``PKG-INFO`` for runtime requirements, licence and home page; ``pyproject.toml``
for the build backend and build requirements), and its own requirements are resolved the same way.
Requirements with markers are evaluated for the device (Linux, no extras).

The index is PyPI unless another base URL is given (:data:`PYPI_INDEX`): files are downloaded from
where the index's document says, and the lock records their canonical ``files.pythonhosted.org`` URL.
:func:`save_index_documents` keeps the documents a refresh of the committed lock reads, so a local
server can answer for PyPI offline (``piccolo-build lock --fetch-only``, which ``build.py test`` runs).

``pip download`` is not used: for an sdist it first builds the package's metadata, which needs the
package's build backend installed (and with ``--no-binary :all:`` builds that backend from source).
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import tomllib
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from piccolo_build.atomic import atomic_write
from piccolo_build.errors import PiccoloError
from piccolo_build.gentoo import atom_name, gentoo_version, normalise
from piccolo_build.lock import (
    FILES_HOST,
    Lock,
    LockedPackage,
    check_fetch_url,
    digests,
    download,
)

log = logging.getLogger(__name__)

# A source checkout's pyproject.toml; an installed piccolo-build has none (`lock --pyproject FILE`).
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
AGENT_EXTRA = "agent"
# The index: PyPI's JSON API lives at ``<index>pypi/<name>/json``. Another index (a local mirror, as
# the tests run one on 127.0.0.1) answers the same documents; its file URLs may point at itself.
PYPI_INDEX = "https://pypi.org/"

# dev-python packages in Flatcar's portage-stable (flatcar/scripts main, 2026-08, under
# sdk_container/src/third_party/portage-stable/dev-python; docs/flatcar.md names the ones that
# matter here). A dependency in this set is used from there; anything else gets an ebuild of ours.
PORTAGE_STABLE_PYTHON = frozenset(
    (
        "cachecontrol",
        "certifi",
        "cffi",
        "chardet",
        "charset-normalizer",
        "colorama",
        "crcmod",
        "cryptography",
        "cython",
        "dependency-groups",
        "distlib",
        "distro",
        "docutils",
        "editables",
        "ensurepip-pip",
        "ensurepip-setuptools",
        "fasteners",
        "fastjsonschema",
        "flit-core",
        "gentoo-common",
        "gpep517",
        "hatch-vcs",
        "hatchling",
        "idna",
        "installer",
        "jaraco-collections",
        "jaraco-context",
        "jaraco-functools",
        "jaraco-text",
        "jinja2",
        "lark",
        "lazy-object-proxy",
        "linkify-it-py",
        "lxml",
        "markdown-it-py",
        "markupsafe",
        "mdurl",
        "more-itertools",
        "msgpack",
        "packaging",
        "pathspec",
        "pefile",
        "pip",
        "pkg-resources",
        "platformdirs",
        "pluggy",
        "ply",
        "poetry-core",
        "pycparser",
        "pydecomp",
        "pygments",
        "pyproject-hooks",
        "pysocks",
        "requests",
        "resolvelib",
        "rich",
        "setuptools-scm",
        "setuptools",
        "six",
        "snakeoil",
        "tomli-w",
        "tomli",
        "tree-sitter",
        "trove-classifiers",
        "truststore",
        "typing-extensions",
        "uc-micro-py",
        "urllib3",
        "vcs-versioning",
        "wheel",
    )
)

# PEP 517 build backend -> DISTUTILS_USE_PEP517 value (the distutils-r1 eclass's names).
BACKENDS = {
    "setuptools.build_meta": "setuptools",
    "setuptools.build_meta:__legacy__": "setuptools",
    "hatchling.build": "hatchling",
    "flit_core.buildapi": "flit",
    "poetry.core.masonry.api": "poetry",
    "pdm.backend": "pdm-backend",
}
# The package distutils-r1 already adds to BDEPEND for each DISTUTILS_USE_PEP517 value.
BACKEND_PACKAGES = {
    "setuptools": {"setuptools", "wheel"},
    "hatchling": {"hatchling"},
    "flit": {"flit-core"},
    "poetry": {"poetry-core"},
    "pdm-backend": {"pdm-backend"},
}
# SPDX identifiers -> Gentoo licence names (licenses/ in the Gentoo tree).
SPDX_TO_GENTOO = {
    "MIT": "MIT",
    "Apache-2.0": "Apache-2.0",
    "BSD-2-Clause": "BSD-2",
    "BSD-3-Clause": "BSD",
    "ISC": "ISC",
    "MPL-2.0": "MPL-2.0",
    "PSF-2.0": "PSF-2",
}
# Packages whose metadata does not name an SPDX licence: the Gentoo name, read from their LICENSE file.
LICENSE_OVERRIDES = {"tpm2-pytss": "BSD-2"}
# Build requirements we deliberately do not use (the ebuild builds without them).
BUILD_REQUIREMENT_SKIPS = {"pyyaml": {"cython"}}  # pure-Python build, see deps.py


def atom(requirement: Any) -> str:
    """A ``packaging`` Requirement -> Gentoo atom. Lower bounds are kept, upper bounds dropped
    (the lock pins our own packages exactly; portage-stable decides the rest)."""
    pn = f"dev-python/{normalise(requirement.name)}"
    best: tuple[str, str] | None = None
    for spec in requirement.specifier:
        op = {">=": ">=", "~=": ">=", ">": ">", "==": "~"}.get(spec.operator)
        if op is None or "*" in spec.version:
            continue
        if best is None or _vkey(spec.version) > _vkey(best[1]):
            best = (op, spec.version)
    if best is None:
        return pn
    try:
        return f"{best[0]}{pn}-{gentoo_version(best[1])}"
    except ValueError as exc:
        raise PiccoloError(f"{requirement}: {exc}") from None


def _vkey(version: str) -> Any:
    from packaging.version import Version

    return Version(version)


def canonical_url(base: str, url: str) -> str:
    """PyPI's file URL as ``files.pythonhosted.org/packages/aa/bb/<digest>/<file>``.

    A mirror or proxy may answer with a relative or rewritten URL; the digest path identifies the
    file wherever it is served from.
    """
    full = urllib.parse.urljoin(base, url)
    m = re.search(r"/([0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{60}/[^/]+)$", full)
    if m is None:
        raise PiccoloError(f"unexpected file URL from PyPI: {full}")
    return FILES_HOST + m.group(1)


@dataclass(frozen=True)
class Release:
    project: str
    version: str
    filename: str
    url: str  # canonical, what the lock records
    fetch_url: str  # where the index says the file is
    sha256: str


def check_index(index: str) -> str:
    """The index base URL ending in ``/``; it must be https, or http on a loopback address."""
    base = index if index.endswith("/") else index + "/"
    check_fetch_url(base)
    return base


def index_document_url(index: str, name: str) -> str:
    """``<index>pypi/<name>/json``."""
    return urllib.parse.urljoin(check_index(index), f"pypi/{urllib.parse.quote(name)}/json")


def index_document(name: str, index: str = PYPI_INDEX) -> tuple[str, bytes, dict[str, Any]]:
    """The index's JSON document of project ``name``: its URL, raw bytes and parsed content."""
    url = index_document_url(index, name)
    raw = download(url)
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PiccoloError(f"{url}: not JSON: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("releases"), dict) or "info" not in info:
        raise PiccoloError(f"{url}: not a PyPI JSON project document (no info/releases)")
    return url, raw, info


def pick_release(name: str, specifier: Any, index: str = PYPI_INDEX) -> Release:
    """The newest final, non-yanked release of ``name`` that satisfies ``specifier`` and has an sdist."""
    from packaging.version import InvalidVersion, Version

    base, _raw, info = index_document(name, index)
    best: tuple[Version, dict[str, Any]] | None = None
    for text, files in info["releases"].items():
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if version.is_prerelease or version.is_devrelease or not specifier.contains(version):
            continue
        sdists = [f for f in files if f["packagetype"] == "sdist" and not f.get("yanked")]
        sdists = [f for f in sdists if f["filename"].endswith(".tar.gz")]
        if sdists and (best is None or version > best[0]):
            best = (version, sdists[0])
    if best is None:
        raise PiccoloError(f"{name}{specifier}: no release with a source distribution on {base}")
    version, f = best
    return Release(
        info["info"]["name"],
        str(version),
        f["filename"],
        canonical_url(base, f["url"]),
        urllib.parse.urljoin(base, f["url"]),
        f["digests"]["sha256"],
    )


def save_index_documents(lock: Lock, dest: Path, index: str = PYPI_INDEX) -> list[Path]:
    """Keep the index's JSON document of every locked package as ``dest/<name>.json`` (bytes as served).

    These are the documents a refresh of ``lock`` reads. A document already in ``dest`` that lists the
    locked sdist with the locked SHA-256 is kept; anything else is downloaded again and must list it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for pkg in lock.packages:
        path = dest / f"{pkg.name}.json"
        out.append(path)
        try:
            if _lists_locked_file(json.loads(path.read_bytes()), pkg):
                continue
        except (OSError, ValueError):
            pass
        url, raw, info = index_document(pkg.name, index)
        if not _lists_locked_file(info, pkg):
            raise PiccoloError(
                f"{url}: does not list {pkg.filename} with the locked SHA-256",
                hint="refresh the lock with `piccolo-build lock`",
            )
        log.info("saved %s", url)
        atomic_write(path, raw)
    return out


def _lists_locked_file(info: Any, pkg: LockedPackage) -> bool:
    try:
        files = info["releases"][pkg.version]
        return any(f["filename"] == pkg.filename and f["digests"]["sha256"] == pkg.sha256 for f in files)
    except (KeyError, TypeError):
        return False


@dataclass(frozen=True)
class SdistMetadata:
    pkg_info: Any  # email.message.Message of PKG-INFO
    requires_dist: tuple[str, ...]
    build_requires: tuple[str, ...]
    build_backend: str | None


def read_sdist(data: bytes, filename: str) -> SdistMetadata:
    """``PKG-INFO`` and ``pyproject.toml``'s ``[build-system]`` of an sdist, read from the archive."""
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        top = min(members, key=len).split("/")[0]

        def read(name: str) -> str | None:
            member = members.get(f"{top}/{name}")
            extracted = tar.extractfile(member) if member else None
            return extracted.read().decode("utf-8") if extracted else None

        pkg_info = read("PKG-INFO")
        pyproject = read("pyproject.toml")
        # Older sdists (tpm2-pytss 2.3.0) leave Requires-Dist out of PKG-INFO; setuptools' egg-info
        # in the sdist still lists the requirements.
        egg = next((n for n in members if n.endswith(".egg-info/requires.txt") and n.count("/") <= 3), None)
        egg_requires = read(egg.split("/", 1)[1]) if egg else None
    if pkg_info is None:
        raise PiccoloError(f"{filename}: no PKG-INFO in the source distribution")
    headers = HeaderParser().parsestr(pkg_info)
    system = tomllib.loads(pyproject).get("build-system", {}) if pyproject else {}
    requires = tuple(headers.get_all("Requires-Dist") or ()) or egg_info_requirements(egg_requires or "")
    return SdistMetadata(
        headers,
        requires,
        tuple(system.get("requires", ("setuptools",))),
        system.get("build-backend"),
    )


def egg_info_requirements(text: str) -> tuple[str, ...]:
    """``*.egg-info/requires.txt`` as requirement strings: the lines before the first section, and
    ``[:marker]`` sections as markers; ``[extra]`` sections are left out (no extras on the device)."""
    out: list[str] = []
    marker: str | None = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("["):
            section = line.strip("[]")
            marker = section[1:] if section.startswith(":") else None
        elif marker == "":
            out.append(line)
        elif marker is not None:
            out.append(f"{line}; {marker}")
    return tuple(out)


def _license(name: str, headers: Mapping[str, Any]) -> str:
    if name in LICENSE_OVERRIDES:
        return LICENSE_OVERRIDES[name]
    expression = headers.get("License-Expression") or headers.get("License") or ""
    tokens = [t for t in re.split(r"\s+(?:AND)\s+|\s+", str(expression).strip()) if t]
    gentoo = [SPDX_TO_GENTOO.get(t) for t in tokens]
    if not tokens or None in gentoo or " OR " in str(expression):
        raise PiccoloError(
            f"{name}: cannot map licence {expression!r} to Gentoo names",
            hint="add it to LICENSE_OVERRIDES in piccolo_build/lock.py",
        )
    return " ".join(dict.fromkeys(g for g in gentoo if g))


def _homepage(headers: Any) -> str:
    for entry in headers.get_all("Project-URL") or ():
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("homepage", "home", "source", "source code"):
            return str(url.strip())
    return str(headers.get("Home-page") or "https://pypi.org/")


def _backend(name: str, meta_: SdistMetadata) -> str:
    backend = meta_.build_backend or "setuptools.build_meta:__legacy__"
    if backend in BACKENDS:
        return BACKENDS[backend]
    # An in-tree wrapper (pyyaml's) around setuptools is built as setuptools.
    if any(normalise(_req_name(r)) == "setuptools" for r in meta_.build_requires):
        return "setuptools"
    raise PiccoloError(f"{name}: unknown build backend {backend!r}", hint="add it to BACKENDS")


def _req_name(text: str) -> str:
    from packaging.requirements import Requirement

    return str(Requirement(text).name)


_TARGET_ENV = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "extra": ""}


def _applicable(requirements: Iterable[str]) -> list[Any]:
    """Requirements that apply on the device: Linux, CPython, no extras."""
    from packaging.requirements import Requirement

    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(dict(_TARGET_ENV)):
            out.append(req)
    return out


def agent_requirements(pyproject: Path = PYPROJECT) -> tuple[str, ...]:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        return tuple(data["project"]["optional-dependencies"][AGENT_EXTRA])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise PiccoloError(f"{pyproject}: project.optional-dependencies.{AGENT_EXTRA}: {exc}") from None


def refresh(pyproject: Path = PYPROJECT, distdir: Path | None = None, index: str = PYPI_INDEX) -> Lock:
    """Resolve the agent's requirements against ``index`` (default PyPI) and build a new lock
    (downloads the sdists).

    With ``distdir`` the downloaded sdists are kept there (then :func:`verify_distfiles` passes).
    """
    check_index(index)  # a bad index URL fails before anything is read
    agent = agent_requirements(pyproject)
    queue: list[tuple[Any, str]] = [(r, "agent") for r in _applicable(agent)]
    found: dict[str, LockedPackage] = {}
    while queue:
        req, wanted_by = queue.pop(0)
        name = normalise(req.name)
        if name in PORTAGE_STABLE_PYTHON:
            continue
        if name in found:
            if not req.specifier.contains(found[name].version):
                raise PiccoloError(f"{wanted_by} needs {req}, but {found[name].version} was locked")
            continue
        pkg, runtime, build_reqs = _lock_one(name, req.specifier, distdir, index)
        found[name] = pkg
        queue.extend((r, name) for r in runtime)
        queue.extend((r, name) for r in build_reqs)
    runtime_names = _runtime_closure(agent, found)
    packages = tuple(replace(found[n], runtime=n in runtime_names) for n in sorted(found))
    return Lock(agent=agent, packages=packages)


def _lock_one(
    name: str, specifier: Any, distdir: Path | None, index: str
) -> tuple[LockedPackage, list[Any], list[Any]]:
    release = pick_release(name, specifier, index)
    data = download(release.fetch_url)
    d = digests(data)
    if d.sha256 != release.sha256:
        raise PiccoloError(f"{release.fetch_url}: SHA-256 differs from what the index lists")
    if distdir is not None:
        distdir.mkdir(parents=True, exist_ok=True)
        atomic_write(distdir / release.filename, data)
    md = read_sdist(data, release.filename)
    backend = _backend(name, md)
    runtime = _applicable(md.requires_dist)
    skip = BACKEND_PACKAGES.get(backend, set()) | BUILD_REQUIREMENT_SKIPS.get(name, set())
    build_reqs = [r for r in _applicable(md.build_requires) if normalise(r.name) not in skip]
    pkg = LockedPackage(
        name=name,
        pypi_name=release.project,
        version=release.version,
        filename=release.filename,
        url=release.url,
        size=d.size,
        sha256=d.sha256,
        blake2b=d.blake2b,
        sha512=d.sha512,
        license=_license(name, md.pkg_info),
        homepage=_homepage(md.pkg_info),
        summary=str(md.pkg_info.get("Summary") or name).strip(),
        build_backend=backend,
        rdepend=tuple(sorted({atom(r) for r in runtime})),
        bdepend=tuple(sorted({atom(r) for r in build_reqs})),
        runtime=False,
    )
    log.info("locked %s %s (%s)", name, pkg.version, pkg.filename)
    return pkg, runtime, build_reqs


def _runtime_closure(agent: Iterable[str], found: Mapping[str, LockedPackage]) -> set[str]:
    todo = [normalise(r.name) for r in _applicable(agent)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in found:
            continue
        seen.add(name)
        todo.extend(atom_name(a) for a in found[name].rdepend)
    return seen
