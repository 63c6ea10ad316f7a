"""The committed lock: well-formed, covers what portage-stable lacks, and matches the real sdists.

The sdists are downloaded from PyPI once per session (a handful of files, about 700 kB).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from piccolo_build import lock as locking
from piccolo_build import resolve
from piccolo_build.errors import PiccoloError
from piccolo_build.lock import Lock, load_lock, verify_distfiles


@pytest.fixture(scope="module")
def committed() -> Lock:
    return load_lock()


@pytest.fixture(scope="module")
def distdir(tmp_path_factory: pytest.TempPathFactory, committed: Lock) -> Path:
    """The locked sdists, downloaded from the URLs in the lock."""
    d = tmp_path_factory.mktemp("distfiles")
    locking.fetch_distfiles(committed, d)
    return d


def test_committed_lock_is_canonical(committed: Lock) -> None:
    text = locking.LOCK_FILE.read_text(encoding="utf-8")
    assert locking.dump_lock(committed) == text, "not what `piccolo-build lock` writes (sorted JSON)"
    assert committed.agent == resolve.agent_requirements()


def test_lock_covers_what_portage_stable_lacks(committed: Lock) -> None:
    names = {p.name for p in committed.packages}
    # FLATCAR.md section 2: portage-stable lacks these, and the agent needs them at runtime.
    assert {"pyyaml", "prometheus-client", "docker", "tpm2-pytss"} <= names
    assert not names & resolve.PORTAGE_STABLE_PYTHON
    runtime = {p.name for p in committed.packages if p.runtime}
    assert runtime == {"pyyaml", "prometheus-client", "docker", "tpm2-pytss"}
    # tpm2-pytss builds with the Python pkgconfig module, which portage-stable lacks too.
    assert "dev-python/pkgconfig" in committed.package("tpm2-pytss").bdepend
    assert not committed.package("pkgconfig").runtime
    for pkg in committed.packages:
        for atom in (*pkg.rdepend, *pkg.bdepend):
            name = locking.atom_name(atom)
            assert name in names or name in resolve.PORTAGE_STABLE_PYTHON, f"{pkg.name}: {atom} unresolved"


def test_every_agent_requirement_is_satisfied(committed: Lock) -> None:
    for text in committed.agent:
        req = Requirement(text)
        pkg = committed.package(locking.normalise(req.name))
        assert req.specifier.contains(pkg.version), f"{pkg.name} {pkg.version} does not satisfy {text}"


def test_verify_passes_for_the_real_files(committed: Lock, distdir: Path) -> None:
    verify_distfiles(committed, distdir)
    for pkg in committed.packages:
        assert (distdir / pkg.filename).stat().st_size == pkg.size


def test_tampered_file_fails_verification(committed: Lock, distdir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(distdir, bad)
    victim = committed.package("docker").filename
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
    committed: Lock, tmp_path: Path, distdir: Path
) -> None:
    """Resolve against PyPI with every agent requirement pinned to the locked version: the new lock
    must equal the committed one (same files, digests, metadata-derived atoms and licences)."""
    pins = [
        f"{Requirement(r).name}=={committed.package(locking.normalise(Requirement(r).name)).version}"
        for r in committed.agent
    ]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[project]\nname = 'x'\nversion = '0'\n[project.optional-dependencies]\nagent = "
        + json.dumps(pins)
        + "\n"
    )
    fresh = resolve.refresh(pyproject, tmp_path / "dl")
    assert fresh.packages == committed.packages
    verify_distfiles(fresh, tmp_path / "dl")


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
    with pytest.raises(PiccoloError, match="cannot read the lock"):
        load_lock(tmp_path / "missing.json")


def test_unsorted_lock_is_rejected(committed: Lock, tmp_path: Path) -> None:
    shuffled = replace(committed, packages=tuple(reversed(committed.packages)))
    path = tmp_path / "piccolo.lock.json"
    path.write_text(locking.dump_lock(shuffled))
    with pytest.raises(PiccoloError, match="sorted by name"):
        load_lock(path)


def test_versions_and_atoms() -> None:
    assert locking.gentoo_version("6.0.4") == "6.0.4"
    assert locking.gentoo_version("1.0rc2") == "1.0_rc2"
    assert locking.gentoo_version("2.1.post3") == "2.1_p3"
    assert locking.gentoo_version("3.0b1") == "3.0_beta1"
    with pytest.raises(PiccoloError):
        locking.gentoo_version("1.0.dev1")
    assert resolve.atom(Requirement("requests>=2.26.0")) == ">=dev-python/requests-2.26.0"
    assert resolve.atom(Requirement("black~=24.0")) == ">=dev-python/black-24.0"
    assert resolve.atom(Requirement("Foo_Bar<3,>=1.2")) == ">=dev-python/foo-bar-1.2"
    assert resolve.atom(Requirement("packaging")) == "dev-python/packaging"
    assert resolve.atom(Requirement("x==1.0")) == "~dev-python/x-1.0"
    assert locking.atom_name(">=dev-python/setuptools-scm-3.4.3") == "setuptools-scm"
    assert locking.atom_key("app-crypt/tpm2-tss") == "app-crypt/tpm2-tss"


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
