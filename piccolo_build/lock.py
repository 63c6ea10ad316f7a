"""The committed dependency lock, ``piccolo.lock.json``: exact versions and digests of agent dependencies.

The agent's runtime dependencies (pyproject's ``agent`` extra) must be in the image, but Flatcar's
``portage-stable`` only carries some Python packages (docs/flatcar.md). For every dependency it
lacks, and every dependency of those that it lacks too (runtime and build), the lock records one exact
version: its source distribution (file name, PyPI URL, size, SHA-256, BLAKE2B, SHA512), licence in
Gentoo names, build backend and dependencies as Gentoo atoms. :mod:`piccolo_build.deps` writes a
``dev-python`` ebuild and a ``Manifest`` for each from the lock alone, so a build needs no index.

``piccolo-build lock`` refreshes it from PyPI (:mod:`piccolo_build.resolve`). Every build checks the
downloaded files against the lock (:func:`verify_distfiles`; :func:`fetch_distfiles` downloads what
is missing first). Downloads use https only, except plain http to a loopback address (a local mirror,
as the tests use: :func:`check_fetch_url`).

The file is JSON written with sorted keys; it is read with :mod:`piccolod.model` (JSON is YAML), so a
bad lock gives a ``file:line: key: message`` error.

Which lock: piccolo-build ships one, :data:`SHIPPED_LOCK` (package data, the pins the agent is tested
with). A project's own ``piccolo.lock.json`` in the working directory (where ``piccolo.yaml`` is read
from) wins over it (:func:`lock_path`). ``piccolo-build lock`` writes where :func:`write_path` says.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piccolo_build import gentoo
from piccolo_build.atomic import atomic_write
from piccolo_build.errors import PiccoloError
from piccolod.model import ModelError, build, load_file, meta, to_plain

log = logging.getLogger(__name__)

LOCK_NAME = "piccolo.lock.json"
PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_LOCK = PACKAGE_DIR / "data" / LOCK_NAME
FILES_HOST = "https://files.pythonhosted.org/packages/"

_HEX = re.compile(r"[0-9a-f]+")
_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_ATOM = re.compile(r"(?:[<>]=?|~|=)?[a-z0-9+_-]+/[A-Za-z0-9+_-]+")


def _hex(length: int) -> Any:
    def check(value: str) -> str:
        if len(value) != length or not _HEX.fullmatch(value):
            raise ValueError(f"expected {length} lowercase hex digits")
        return value

    return check


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"not a normalised package name: {value!r}")
    return value


def _atoms(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not _ATOM.match(value) or any(c in value for c in " \"'$`\\"):
            raise ValueError(f"not a Gentoo dependency atom: {value!r}")
    return values


def _filename(value: str) -> str:
    if "/" in value or not value.endswith(".tar.gz"):
        raise ValueError(f"expected a .tar.gz file name, got {value!r}")
    return value


def _url(value: str) -> str:
    if not value.startswith(FILES_HOST):
        raise ValueError(f"expected a URL under {FILES_HOST}, got {value!r}")
    return value


@dataclass(frozen=True)
class LockedPackage:
    """One pinned dependency the overlay carries an ebuild for."""

    name: str = field(metadata=meta("Gentoo package name (PEP 503 normalised)", check=_name))
    pypi_name: str = field(metadata=meta("project name as PyPI spells it"))
    version: str = field(metadata=meta("exact version (PEP 440, final release)"))
    filename: str = field(metadata=meta("source distribution file", check=_filename))
    url: str = field(metadata=meta("where PyPI serves the file", check=_url))
    size: int = field(metadata=meta("file size in bytes"))
    sha256: str = field(metadata=meta("SHA-256 of the file", check=_hex(64)))
    blake2b: str = field(metadata=meta("BLAKE2B (512 bits) of the file", check=_hex(128)))
    sha512: str = field(metadata=meta("SHA-512 of the file", check=_hex(128)))
    license: str = field(metadata=meta("Gentoo licence names"))
    homepage: str = field(metadata=meta("upstream home page"))
    summary: str = field(metadata=meta("one-line description"))
    build_backend: str = field(metadata=meta("DISTUTILS_USE_PEP517 value"))
    rdepend: tuple[str, ...] = field(metadata=meta("runtime dependencies, Gentoo atoms", check=_atoms))
    bdepend: tuple[str, ...] = field(metadata=meta("build dependencies, Gentoo atoms", check=_atoms))
    runtime: bool = field(metadata=meta("needed on the device (else only to build another package)"))

    @property
    def atom(self) -> str:
        return f"dev-python/{self.name}"

    @property
    def gentoo_version(self) -> str:
        return gentoo.gentoo_version(self.version)

    def dist_line(self) -> str:
        """The package's Manifest line, from the lock's digests of the real sdist."""
        return gentoo.dist_line(self.filename, self.size, self.blake2b, self.sha512)


@dataclass(frozen=True)
class Lock:
    """``piccolo.lock.json``."""

    agent: tuple[str, ...] = field(metadata=meta("the agent's requirements (pyproject extra 'agent')"))
    packages: tuple[LockedPackage, ...] = field(metadata=meta("pinned dependencies, sorted by name"))

    def package(self, name: str) -> LockedPackage:
        for pkg in self.packages:
            if pkg.name == name:
                return pkg
        raise KeyError(name)


# --- reading and writing the lock --------------------------------------------------------------


def lock_path(project: Path = Path()) -> Path:
    """The lock in use: the project's own ``piccolo.lock.json`` (in ``project``, default the working
    directory) when there is one, else the lock piccolo-build ships."""
    own = project / LOCK_NAME
    return own if os.path.lexists(own) else SHIPPED_LOCK


def source_checkout() -> Path | None:
    """The source checkout piccolo-build runs from (an editable install), or None when installed."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "build.py").is_file() else None


def write_path(project: Path = Path()) -> Path:
    """Where ``piccolo-build lock`` writes without ``--lock-file``: the lock in use, except that an
    installed piccolo-build's own lock is never rewritten (that would edit site-packages): without a
    project lock it starts one in ``project``. From a source checkout it refreshes the shipped lock."""
    path = lock_path(project)
    if path == SHIPPED_LOCK and source_checkout() is None:
        return project / LOCK_NAME
    return path


def load_lock(path: Path | None = None) -> Lock:
    """Read and validate the lock (default :func:`lock_path`); errors are ``PiccoloError`` naming file,
    line and key."""
    path = path if path is not None else lock_path()
    try:
        data, src = load_file(path)
        lock = build(Lock, data, src)
    except ModelError as exc:
        raise PiccoloError(str(exc), hint="run `piccolo-build lock` to regenerate it") from None
    names = [p.name for p in lock.packages]
    if names != sorted(set(names)):
        raise PiccoloError(f"{path}: packages: must be sorted by name, each once")
    return lock


def dump_lock(lock: Lock) -> str:
    return json.dumps(to_plain(lock), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write_lock(lock: Lock, path: Path) -> bool:
    """Write atomically; returns whether the content changed."""
    text = dump_lock(lock)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write(path, text.encode())
    return True


# --- digests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    blake2b: str
    sha512: str


def digests(data: bytes) -> Digests:
    return Digests(
        len(data),
        hashlib.sha256(data).hexdigest(),
        hashlib.blake2b(data).hexdigest(),
        hashlib.sha512(data).hexdigest(),
    )


def verify_distfiles(lock: Lock, distdir: Path) -> None:
    """Check every locked sdist in ``distdir`` against the lock; raise one error listing each problem."""
    problems = []
    for pkg in lock.packages:
        path = distdir / pkg.filename
        try:
            got = digests(path.read_bytes())
        except OSError as exc:
            problems.append(f"{pkg.filename}: {exc.strerror or exc}")
            continue
        want = Digests(pkg.size, pkg.sha256, pkg.blake2b, pkg.sha512)
        bad = [k for k in ("size", "sha256", "blake2b", "sha512") if getattr(got, k) != getattr(want, k)]
        if bad:
            problems.append(f"{pkg.filename}: {', '.join(bad)} differ from the lock")
    if problems:
        raise PiccoloError(
            f"{distdir}: distfiles do not match {LOCK_NAME}: " + "; ".join(problems),
            hint="delete the bad files and fetch again, or refresh the lock with `piccolo-build lock`",
        )


def fetch_distfiles(
    lock: Lock, distdir: Path, *, refetch_bad: bool = False, files_host: str = FILES_HOST
) -> list[Path]:
    """Download the locked sdists missing from ``distdir``, then verify all of them.

    A file already there is kept as it is, so a wrong one fails the verification, unless ``refetch_bad``
    (a cache of downloads): then a file that does not match the lock is downloaded again.
    ``files_host`` replaces ``https://files.pythonhosted.org/packages/`` in the URLs (a mirror).
    """
    distdir.mkdir(parents=True, exist_ok=True)
    for pkg in lock.packages:
        path = distdir / pkg.filename
        if path.exists() and refetch_bad and not _matches(pkg, path):
            log.info("%s does not match the lock: downloading it again", path)
            path.unlink()
        if not path.exists():
            url = files_host + pkg.url.removeprefix(FILES_HOST)
            log.info("downloading %s", url)
            atomic_write(path, download(url))
    verify_distfiles(lock, distdir)
    return [distdir / p.filename for p in lock.packages]


def _matches(pkg: LockedPackage, path: Path) -> bool:
    try:
        got = digests(path.read_bytes())
    except OSError:
        return False
    return got == Digests(pkg.size, pkg.sha256, pkg.blake2b, pkg.sha512)


# --- downloading ------------------------------------------------------------------------------


def check_fetch_url(url: str) -> None:
    """Downloads use https; plain http only to a loopback address written as such (127.0.0.0/8 or
    ``[::1]``, no name lookup): a local index or mirror, e.g. in tests. Anything else is refused."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return
        except ValueError:
            pass
    raise PiccoloError(
        f"refusing to fetch {url}: only https URLs, or http to 127.0.0.0/8 or [::1]",
        hint="use https, or serve a local mirror on a loopback address",
    )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL :func:`check_fetch_url` allows (no https -> http downgrade)."""

    def redirect_request(  # noqa: PLR0917 - the signature urllib calls
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        check_fetch_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, timeout: float = 60) -> bytes:
    """The body of ``url`` (see :func:`check_fetch_url`, also for redirects). A loopback URL never
    goes through a proxy."""
    check_fetch_url(url)
    local = urllib.parse.urlsplit(url).scheme == "http"
    handlers: list[urllib.request.BaseHandler] = [_CheckedRedirects()]
    if local:
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bytes(resp.read())
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        hint = "is the local index running?" if local else "is PyPI reachable?"
        raise PiccoloError(f"cannot fetch {url}: {exc}", hint=hint) from None
