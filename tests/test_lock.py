"""The committed lock: well-formed, covers what portage-stable lacks, and matches the real sdists.

No test touches the network beyond 127.0.0.1. The real sdists and PyPI's JSON documents of the locked
packages are downloaded by the install step, ``python3 build.py test`` (``piccolo-build lock
--fetch-only``), into ``$PICCOLO_TEST_CACHE`` (default ``.venv/test-cache``); a missing or stale cache
fails these tests loudly. The refresh runs against a real HTTP server on 127.0.0.1 that serves the
cached documents and files the way a PyPI mirror does.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from piccolo_build import gentoo, resolve
from piccolo_build import lock as locking
from piccolo_build.errors import PiccoloError
from piccolo_build.lock import Lock, load_lock, verify_distfiles

CACHE_VARIABLE = "PICCOLO_TEST_CACHE"  # set by build.py
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".venv" / "test-cache"
FILL_COMMAND = "python3 build.py test  (or: .venv/bin/piccolo-build lock --fetch-only {cache})"


def checked_cache(root: Path, lock: Lock) -> Path:
    """``root`` if it holds every locked sdist (matching the lock) and every package's index document;
    otherwise the test fails, saying how to fill it. Never downloads."""
    try:
        verify_distfiles(lock, root / "distfiles")
        for pkg in lock.packages:
            json.loads((root / "pypi" / f"{pkg.name}.json").read_bytes())
    except (PiccoloError, OSError, ValueError) as exc:
        pytest.fail(
            f"the tests' download cache {root} is missing or stale ({exc}); fill it with: "
            + FILL_COMMAND.format(cache=root),
            pytrace=False,
        )
    return root


@pytest.fixture(scope="module")
def committed() -> Lock:
    return load_lock()


@pytest.fixture(scope="module")
def cache(committed: Lock) -> Path:
    return checked_cache(Path(os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE), committed)


@pytest.fixture(scope="module")
def distdir(cache: Path) -> Path:
    """The locked sdists, as the install step downloaded them (read only: copy before changing)."""
    return cache / "distfiles"


@dataclass
class LocalIndex:
    """A PyPI stand-in on 127.0.0.1: ``/pypi/<name>/json`` and ``/packages/<aa>/<bb>/<digest>/<file>``."""

    url: str
    root: Path
    requests: list[str] = field(default_factory=list)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        self.requests.append(self.path)


def _served_here(document: Path) -> object:
    """The cached document with every file URL made relative to this server (``../../packages/...``),
    whatever form the index that served it used (absolute, or a mirror's own relative form)."""
    info = json.loads(document.read_bytes())
    for files in info["releases"].values():
        for f in files:
            canonical = resolve.canonical_url(
                f"{resolve.PYPI_INDEX}pypi/{info['info']['name']}/json", f["url"]
            )
            f["url"] = "../../packages/" + canonical.removeprefix(locking.FILES_HOST)
    return info


@pytest.fixture
def local_index(cache: Path, committed: Lock, tmp_path: Path) -> Iterator[LocalIndex]:
    """The cached documents and sdists served over real HTTP on a free port of 127.0.0.1. As a mirror
    does, the documents' file URLs point at the server itself (relative); only locked files exist."""
    root = tmp_path / "index"
    for pkg in committed.packages:
        doc = root / "pypi" / pkg.name / "json"
        doc.parent.mkdir(parents=True)
        doc.write_text(json.dumps(_served_here(cache / "pypi" / f"{pkg.name}.json")))
        target = root / "packages" / pkg.url.removeprefix(locking.FILES_HOST)
        target.parent.mkdir(parents=True)
        target.symlink_to(cache / "distfiles" / pkg.filename)
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, name="local-index", daemon=True)
    thread.start()
    try:
        yield LocalIndex(f"http://127.0.0.1:{server.server_address[1]}/", root, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_committed_lock_is_canonical(committed: Lock) -> None:
    text = locking.SHIPPED_LOCK.read_text(encoding="utf-8")
    assert locking.dump_lock(committed) == text, "not what `piccolo-build lock` writes (sorted JSON)"
    assert committed.agent == resolve.agent_requirements()


def test_lock_covers_what_portage_stable_lacks(committed: Lock) -> None:
    names = {p.name for p in committed.packages}
    # docs/flatcar.md: portage-stable lacks these, and the agent needs them at runtime.
    assert {"asn1crypto", "pyyaml", "tpm2-pytss"} <= names
    assert not names & resolve.PORTAGE_STABLE_PYTHON
    runtime = {p.name for p in committed.packages if p.runtime}
    assert runtime == {"asn1crypto", "pyyaml", "tpm2-pytss"}
    # tpm2-pytss builds with the Python pkgconfig module, which portage-stable lacks too.
    assert "dev-python/pkgconfig" in committed.package("tpm2-pytss").bdepend
    assert not committed.package("pkgconfig").runtime
    for pkg in committed.packages:
        for atom in (*pkg.rdepend, *pkg.bdepend):
            name = gentoo.atom_name(atom)
            assert name in names or name in resolve.PORTAGE_STABLE_PYTHON, f"{pkg.name}: {atom} unresolved"


def test_every_agent_requirement_is_satisfied(committed: Lock) -> None:
    for text in committed.agent:
        req = Requirement(text)
        pkg = committed.package(gentoo.normalise(req.name))
        assert req.specifier.contains(pkg.version), f"{pkg.name} {pkg.version} does not satisfy {text}"


def test_verify_passes_for_the_real_files(committed: Lock, distdir: Path) -> None:
    verify_distfiles(committed, distdir)
    for pkg in committed.packages:
        assert (distdir / pkg.filename).stat().st_size == pkg.size


def test_tampered_file_fails_verification(committed: Lock, distdir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(distdir, bad)
    victim = committed.package("tpm2-pytss").filename
    data = bytearray((bad / victim).read_bytes())
    data[1000] ^= 0x01  # same size, one bit flipped
    (bad / victim).write_bytes(bytes(data))
    with pytest.raises(PiccoloError) as exc:
        verify_distfiles(committed, bad)
    assert f"{victim}: sha256, blake2b, sha512 differ from the lock" in exc.value.message
    assert "size" not in exc.value.message.split(victim)[1].split(";")[0]


def test_truncated_and_missing_files_fail(committed: Lock, distdir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(distdir, bad)
    pyyaml = committed.package("pyyaml").filename
    (bad / pyyaml).write_bytes((bad / pyyaml).read_bytes()[:-10])
    (bad / committed.package("pkgconfig").filename).unlink()
    with pytest.raises(PiccoloError) as exc:
        verify_distfiles(committed, bad)
    message = exc.value.message
    assert "\n" not in message
    assert f"{pyyaml}: size, sha256, blake2b, sha512 differ" in message
    assert "pkgconfig-1.6.0.tar.gz: No such file or directory" in message


def test_refresh_with_the_locked_pins_reproduces_the_lock(
    committed: Lock, tmp_path: Path, local_index: LocalIndex
) -> None:
    """Resolve against the local index with every agent requirement pinned to the locked version: the
    new lock must equal the committed one (same files, digests, metadata-derived atoms and licences,
    and the canonical PyPI URLs, not the mirror's)."""
    pins = [
        f"{Requirement(r).name}=={committed.package(gentoo.normalise(Requirement(r).name)).version}"
        for r in committed.agent
    ]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[project]\nname = 'x'\nversion = '0'\n[project.optional-dependencies]\nagent = "
        + json.dumps(pins)
        + "\n"
    )
    fresh = resolve.refresh(pyproject, tmp_path / "dl", index=local_index.url)
    assert fresh.packages == committed.packages
    verify_distfiles(fresh, tmp_path / "dl")
    # Everything came from the local index: each document once, each locked sdist once.
    assert sorted(local_index.requests) == sorted(
        [f"/pypi/{p.name}/json" for p in committed.packages]
        + [f"/packages/{p.url.removeprefix(locking.FILES_HOST)}" for p in committed.packages]
    )


def test_lock_command_against_the_local_index(
    committed: Lock, tmp_path: Path, local_index: LocalIndex
) -> None:
    """``piccolo-build lock --index URL`` resolves the real agent extra there and writes the lock file."""
    from typer.testing import CliRunner

    from piccolo_build.cli import _register, app

    _register()
    target = tmp_path / "piccolo.lock.json"
    pinned = tmp_path / "pyproject.toml"
    pinned.write_text(
        "[project]\nname = 'x'\nversion = '0'\n[project.optional-dependencies]\nagent = "
        + json.dumps([f"{p.pypi_name}=={p.version}" for p in committed.packages if p.runtime])
        + "\n"
    )
    args = [
        "lock",
        "--json",
        "--index",
        local_index.url,
        "--lock-file",
        str(target),
        "--pyproject",
        str(pinned),
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["packages"] == {p.name: p.version for p in committed.packages}
    assert load_lock(target).packages == committed.packages


def test_fetch_only_fills_a_cache_and_keeps_good_files(
    committed: Lock, tmp_path: Path, local_index: LocalIndex
) -> None:
    """``save_index_documents`` and ``fetch_distfiles(refetch_bad=True)``, the install step's halves:
    missing or wrong files are fetched, files matching the lock are not fetched again."""
    docs = resolve.save_index_documents(committed, tmp_path / "pypi", local_index.url)
    assert [d.name for d in docs] == [f"{p.name}.json" for p in committed.packages]
    for pkg, doc in zip(committed.packages, docs, strict=True):
        assert doc.read_bytes() == (local_index.root / "pypi" / pkg.name / "json").read_bytes()
    mirror = local_index.url + "packages/"
    files = locking.fetch_distfiles(committed, tmp_path / "dist", refetch_bad=True, files_host=mirror)
    verify_distfiles(committed, tmp_path / "dist")
    fetched = len(local_index.requests)
    assert fetched == 2 * len(committed.packages)
    # A second run with everything in place asks for nothing.
    resolve.save_index_documents(committed, tmp_path / "pypi", local_index.url)
    locking.fetch_distfiles(committed, tmp_path / "dist", refetch_bad=True, files_host=mirror)
    assert len(local_index.requests) == fetched
    # A damaged sdist and a document that no longer lists the locked file are fetched again.
    files[0].write_bytes(b"damaged")
    docs[1].write_text('{"info": {}, "releases": {}}')
    resolve.save_index_documents(committed, tmp_path / "pypi", local_index.url)
    locking.fetch_distfiles(committed, tmp_path / "dist", refetch_bad=True, files_host=mirror)
    assert local_index.requests[fetched:] == [
        f"/pypi/{committed.packages[1].name}/json",
        f"/packages/{committed.packages[0].url.removeprefix(locking.FILES_HOST)}",
    ]
    verify_distfiles(committed, tmp_path / "dist")
    # Without refetch_bad (``bundle --deps``) a damaged file is an error, not replaced.
    files[0].write_bytes(b"damaged")
    with pytest.raises(PiccoloError, match="differ from the lock"):
        locking.fetch_distfiles(committed, tmp_path / "dist", files_host=mirror)


def test_index_that_lacks_the_locked_file_is_an_error(
    committed: Lock, tmp_path: Path, local_index: LocalIndex
) -> None:
    pkg = committed.packages[0]
    (local_index.root / "pypi" / pkg.name / "json").write_text('{"info": {"name": "x"}, "releases": {}}')
    with pytest.raises(PiccoloError, match=f"does not list {pkg.filename} with the locked SHA-256"):
        resolve.save_index_documents(committed, tmp_path / "pypi", local_index.url)
    (local_index.root / "pypi" / pkg.name / "json").write_text("<html>not json</html>")
    with pytest.raises(PiccoloError, match=r"/pypi/.*/json: not JSON"):
        resolve.save_index_documents(committed, tmp_path / "pypi", local_index.url)


def test_missing_cache_fails_loudly(committed: Lock, tmp_path: Path) -> None:
    """No cache is a test failure that names the command filling it, never a skip or a download."""
    with pytest.raises(pytest.fail.Exception, match=r"missing or stale .*lock --fetch-only"):
        checked_cache(tmp_path, committed)


def test_only_https_or_loopback_http_is_fetched() -> None:
    for url in (
        "https://pypi.org/pypi/x/json",
        "https://files.pythonhosted.org/packages/a",
        "http://127.0.0.1:8080/pypi/x/json",
        "http://127.45.6.7/x",
        "http://[::1]:9/x",
    ):
        locking.check_fetch_url(url)
    for url in (
        "http://pypi.org/pypi/x/json",
        "http://8.8.8.8/x",
        "http://10.0.0.1/x",
        "http://192.168.1.1/x",
        "http://localhost/x",  # a name, not an address: it could resolve anywhere
        "http://[::2]/x",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "https:///no-host",
        "127.0.0.1/x",
    ):
        with pytest.raises(PiccoloError, match="refusing to fetch"):
            locking.check_fetch_url(url)
    # A non-loopback http index is refused before anything is requested.
    with pytest.raises(PiccoloError, match=r"refusing to fetch http://pypi\.org/: "):
        resolve.refresh(index="http://pypi.org/")


def test_redirect_away_from_loopback_is_refused() -> None:
    """A local server redirecting to a public http address: refused before any connection is made."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://192.0.2.1/pypi/x/json")  # TEST-NET-1, never contacted
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, name="redirect", daemon=True)
    thread.start()
    try:
        with pytest.raises(PiccoloError, match=r"refusing to fetch http://192\.0\.2\.1/"):
            locking.download(f"http://127.0.0.1:{server.server_address[1]}/pypi/x/json", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_malformed_lock_names_file_line_and_key(committed: Lock, tmp_path: Path) -> None:
    text = locking.dump_lock(committed)
    sha = committed.packages[1].sha512
    bad = tmp_path / "piccolo.lock.json"
    bad.write_text(text.replace(sha, sha[:-1] + "Z"))
    with pytest.raises(PiccoloError) as exc:
        load_lock(bad)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if sha in t)
    assert exc.value.message == (f"{bad}:{line}: packages[1].sha512: expected 128 lowercase hex digits")
    bad.write_text(text.replace('"runtime": true', '"runtime": "yes"', 1))
    with pytest.raises(
        PiccoloError, match=r"piccolo.lock.json:\d+: packages\[0\]\.runtime: expected true or false"
    ):
        load_lock(bad)
    with pytest.raises(PiccoloError, match=r"missing\.json: cannot read: No such file or directory"):
        load_lock(tmp_path / "missing.json")


def test_unsorted_lock_is_rejected(committed: Lock, tmp_path: Path) -> None:
    shuffled = replace(committed, packages=tuple(reversed(committed.packages)))
    path = tmp_path / "piccolo.lock.json"
    path.write_text(locking.dump_lock(shuffled))
    with pytest.raises(PiccoloError, match="sorted by name"):
        load_lock(path)


def test_versions_and_atoms() -> None:
    assert gentoo.gentoo_version("6.0.4") == "6.0.4"
    assert gentoo.gentoo_version("1.0rc2") == "1.0_rc2"
    assert gentoo.gentoo_version("2.1.post3") == "2.1_p3"
    assert gentoo.gentoo_version("3.0b1") == "3.0_beta1"
    with pytest.raises(ValueError, match="no Gentoo equivalent"):
        gentoo.gentoo_version("1.0.dev1")
    assert resolve.atom(Requirement("requests>=2.26.0")) == ">=dev-python/requests-2.26.0"
    assert resolve.atom(Requirement("black~=24.0")) == ">=dev-python/black-24.0"
    assert resolve.atom(Requirement("Foo_Bar<3,>=1.2")) == ">=dev-python/foo-bar-1.2"
    assert resolve.atom(Requirement("packaging")) == "dev-python/packaging"
    assert resolve.atom(Requirement("x==1.0")) == "~dev-python/x-1.0"
    assert gentoo.atom_name(">=dev-python/setuptools-scm-3.4.3") == "setuptools-scm"
    assert gentoo.atom_key("app-crypt/tpm2-tss") == "app-crypt/tpm2-tss"


def test_canonical_url_accepts_relative_and_proxied_forms() -> None:
    path = "76/b8/" + "c" * 60 + "/pyyaml-6.0.4.tar.gz"
    want = locking.FILES_HOST + path
    assert (
        resolve.canonical_url("https://pypi.org/pypi/pyyaml/json", f"../../packages/packages/{path}") == want
    )
    assert resolve.canonical_url("https://pypi.org/pypi/pyyaml/json", want) == want
    with pytest.raises(PiccoloError):
        resolve.canonical_url("https://pypi.org/pypi/x/json", "https://example.invalid/x.tar.gz")


def test_bundle_deps_fetches_and_verifies(committed: Lock, distdir: Path, tmp_path: Path) -> None:
    """``bundle --deps`` fills OUTPUT with the verified dependency sdists; a bad one is an error."""
    from typer.testing import CliRunner

    from piccolo_build.cli import _register, app

    _register()
    out = tmp_path / "dist"
    shutil.copytree(distdir, out)  # already downloaded: nothing is fetched again
    r = CliRunner().invoke(app, ["bundle", "--deps", "--json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["dependencies"] == [str(out / p.filename) for p in committed.packages]
    (out / committed.package("pyyaml").filename).write_bytes(b"not pyyaml")
    r = CliRunner().invoke(app, ["bundle", "--deps", "-o", str(out)])
    assert r.exit_code != 0
    assert isinstance(r.exception, PiccoloError)
    assert "pyyaml-6.0.4.tar.gz: size, sha256, blake2b, sha512 differ from the lock" in r.exception.message
