"""The agent sdist: reproducible bytes, normalised tar entries, nothing but the agent, and it installs.

Also the Manifest line (checked against hashlib) and the ``--base_sysexts`` value.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

import piccolod
from piccolo_build import bundle, gentoo
from piccolo_build.config import BuildConfig
from piccolo_build.errors import PiccoloError
from piccolo_build.lock import Lock, load_lock
from piccolod.model import default

BIN = Path(sys.executable).parent
CLI = str(BIN / "piccolo-build")
AGENT_DIR = Path(piccolod.__file__).resolve().parent


@pytest.fixture
def cfg() -> BuildConfig:
    return default(BuildConfig)


@pytest.fixture(scope="module")
def lock() -> Lock:
    return load_lock()


def _cli(
    *args: str, cwd: Path, umask: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    full_env.update(env or {})
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.umask(umask),
    )


def _copy_agent(dest: Path, file_mode: int, mtime: int) -> Path:
    """A copy of the agent sources with odd permissions, mtimes and stray files."""
    root = dest / "piccolod"
    shutil.copytree(AGENT_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(file_mode)
            os.utime(path, (mtime, mtime))
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"junk")
    (root / ".#editor-lock.py").write_text("junk")
    (root / "notes.txt").write_text("not part of the sdist")
    return root


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


# --- determinism ---------------------------------------------------------------------------------


def test_cli_sdist_is_byte_identical_across_directories_and_umasks(tmp_path: Path, cfg: BuildConfig) -> None:
    outs = []
    for name, umask in (("one", 0o022), ("two", 0o077)):
        work = tmp_path / name
        work.mkdir()
        r = _cli("bundle", "--output", "dist", cwd=work, umask=umask)
        assert r.returncode == 0, r.stderr
        path = work / "dist" / "piccolod-0.1.0.tar.gz"
        assert r.stdout.splitlines()[0] == "dist/piccolod-0.1.0.tar.gz"
        assert (path.stat().st_mode & 0o777) == 0o644, "the file mode must not follow the umask"
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temporary files left behind"
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]
    line = r.stdout.splitlines()[1]
    assert line == gentoo.manifest_line(path.name, outs[1])


def test_sources_with_different_modes_and_mtimes_give_the_same_bytes(
    tmp_path: Path, cfg: BuildConfig, lock: Lock
) -> None:
    old = os.umask(0o077)
    try:
        a = _copy_agent(tmp_path / "a", 0o600, 1_000_000_000)
    finally:
        os.umask(old)
    b = _copy_agent(tmp_path / "b", 0o755, 1_750_000_000)
    data_a = bundle.sdist_bytes(cfg, lock=lock, epoch=1_700_000_000, sources=bundle.agent_sources(a))
    data_b = bundle.sdist_bytes(cfg, lock=lock, epoch=1_700_000_000, sources=bundle.agent_sources(b))
    assert data_a == data_b
    names = [m.name for m in _members(data_a)]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".txt")) or "/.#" in n]


def test_source_date_epoch_sets_every_mtime(tmp_path: Path) -> None:
    mtimes = {}
    for sde in ("", "1700000000"):
        r = _cli("bundle", "-o", f"out{sde}", cwd=tmp_path, umask=0o022, env={"SOURCE_DATE_EPOCH": sde})
        assert r.returncode == 0, r.stderr
        data = (tmp_path / f"out{sde}" / "piccolod-0.1.0.tar.gz").read_bytes()
        mtimes[sde] = {m.mtime for m in _members(data)}
    assert mtimes == {"": {bundle.DEFAULT_EPOCH}, "1700000000": {1_700_000_000}}


def test_source_date_epoch_semantics() -> None:
    assert bundle.source_date_epoch({}) == bundle.DEFAULT_EPOCH == 315532800
    assert bundle.source_date_epoch({"SOURCE_DATE_EPOCH": ""}) == bundle.DEFAULT_EPOCH
    assert bundle.source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1_700_000_000
    # Before 1980 a wheel (zip) cannot hold the time: raised to 1980.
    assert bundle.source_date_epoch({"SOURCE_DATE_EPOCH": "0"}) == bundle.DEFAULT_EPOCH
    for bad in ("abc", "-5", "1.5"):
        with pytest.raises(PiccoloError, match="SOURCE_DATE_EPOCH"):
            bundle.source_date_epoch({"SOURCE_DATE_EPOCH": bad})


def test_bad_source_date_epoch_is_a_one_line_cli_error(tmp_path: Path) -> None:
    r = _cli("bundle", "-o", "out", cwd=tmp_path, umask=0o022, env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert r.returncode == 2
    assert r.stderr.splitlines()[0].startswith("error: SOURCE_DATE_EPOCH='yesterday'")
    assert not (tmp_path / "out").exists()


def test_gzip_header_has_no_time_and_no_name(cfg: BuildConfig, lock: Lock) -> None:
    data = bundle.sdist_bytes(cfg, lock=lock, epoch=1_700_000_000)
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] & 0x08 == 0, "FNAME flag set"
    assert data[4:8] == b"\0\0\0\0", "gzip MTIME is not zero"
    tar = gzip.decompress(data)
    assert tar[257:262] == b"ustar"


# --- what is inside ------------------------------------------------------------------------------


def test_real_tar_listing(tmp_path: Path, cfg: BuildConfig, lock: Lock) -> None:
    path = tmp_path / "piccolod-0.1.0.tar.gz"
    path.write_bytes(bundle.sdist_bytes(cfg, lock=lock, epoch=1_700_000_000))
    r = subprocess.run(
        ["tar", "--numeric-owner", "--full-time", "-tvzf", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    lines = r.stdout.splitlines()
    names = []
    for line in lines:
        mode, owner, _size, date, time_, name = line.split(maxsplit=5)
        assert owner == "0/0", line
        assert (date, time_) == ("2023-11-14", "22:13:20"), line
        assert mode == ("drwxr-xr-x" if name.endswith("/") else "-rw-r--r--"), line
        names.append(name.rstrip("/"))
    assert names == sorted(names), "entries are not in sorted order"
    assert names[0] == "piccolod-0.1.0"
    assert "piccolod-0.1.0/pyproject.toml" in names
    assert "piccolod-0.1.0/PKG-INFO" in names
    assert "piccolod-0.1.0/piccolod/__init__.py" in names
    assert "piccolod-0.1.0/piccolod/py.typed" in names
    # uname/gname are empty (tar shows numeric ids only when names are empty or suppressed).
    plain = subprocess.run(["tar", "-tvzf", str(path)], capture_output=True, text=True, check=True)
    assert all(" 0/0 " in line for line in plain.stdout.splitlines())


def test_only_the_agent_is_inside(cfg: BuildConfig, lock: Lock) -> None:
    data = bundle.sdist_bytes(cfg, lock=lock)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    top = {n.split("/")[1] for n in files}
    assert top == {"PKG-INFO", "pyproject.toml", "piccolod"}
    expected = {
        f"piccolod-0.1.0/piccolod/{p.relative_to(AGENT_DIR).as_posix()}"
        for p in AGENT_DIR.rglob("*")
        if p.is_file() and (p.suffix == ".py" or p.name == "py.typed") and "__pycache__" not in p.parts
    }
    assert {n for n in files if "/piccolod/" in n} == expected
    for name, content in files.items():
        assert not re.search(rb"^\s*(from|import)\s+piccolo_build", content, re.M), (
            f"{name} imports the builder"
        )
        assert name.endswith((".py", "py.typed", "PKG-INFO", "pyproject.toml")), name


def test_generated_metadata(cfg: BuildConfig, lock: Lock) -> None:
    text = bundle.pyproject(cfg, lock).decode()
    assert 'name = "piccolod"' in text
    assert 'version = "0.1.0"' in text
    assert 'piccolod = "piccolod.cli:main"' in text
    assert 'dependencies = ["pyyaml>=6.0", "tpm2-pytss>=2.3,<3"]' in text
    info = bundle.pkg_info(cfg, lock).decode().splitlines()
    assert info[:3] == ["Metadata-Version: 2.1", "Name: piccolod", "Version: 0.1.0"]
    assert [x for x in info if x.startswith("Requires-Dist:")] == [f"Requires-Dist: {r}" for r in lock.agent]


def test_versions_translate_like_the_pypi_eclass(cfg: BuildConfig, lock: Lock) -> None:
    rc = replace(cfg, version="1.2.0_rc1-r3")
    assert bundle.sdist_name(rc) == "piccolod-1.2.0_rc1.tar.gz"
    assert 'version = "1.2.0rc1"' in bundle.pyproject(rc, lock).decode()
    assert gentoo.pep440_version("2.0_p4") == "2.0.post4"
    assert gentoo.pep440_version("2.0_beta2") == "2.0b2"


@pytest.mark.slow
def test_sdist_builds_and_installs(tmp_path: Path, cfg: BuildConfig) -> None:
    sdist = bundle.build_sdist(cfg, tmp_path / "dist")
    target = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            # Offline: no index, and the venv's own setuptools builds it (no isolated download).
            "--no-index",
            "--no-build-isolation",
            "--no-cache-dir",
            "--target",
            str(target),
            str(sdist),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "piccolod" / "py.typed").exists()
    script = (target / "bin" / "piccolod").read_text()
    assert "from piccolod.cli import main" in script
    meta = (target / "piccolod-0.1.0.dist-info" / "METADATA").read_text()
    from packaging.requirements import Requirement

    requires = [Requirement(x.split(": ", 1)[1]) for x in meta.splitlines() if x.startswith("Requires-Dist:")]
    assert sorted((r.name, str(r.specifier)) for r in requires) == [
        ("pyyaml", ">=6.0"),
        ("tpm2-pytss", "<3,>=2.3"),
    ]
    # The installed copy is the one imported (cwd is outside the checkout).
    probe = subprocess.run(
        [sys.executable, "-c", "import piccolod.cli; print(piccolod.cli.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(target), "PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    assert probe.stdout.strip() == str(target / "piccolod" / "cli.py")


# --- Manifest and sysext -------------------------------------------------------------------------


def test_manifest_line_matches_hashlib() -> None:
    data = b"piccolo" * 1000
    line = gentoo.manifest_line("piccolod-0.1.0.tar.gz", data)
    assert line == (
        f"DIST piccolod-0.1.0.tar.gz 7000 BLAKE2B {hashlib.blake2b(data).hexdigest()} "
        f"SHA512 {hashlib.sha512(data).hexdigest()}"
    )
    assert re.fullmatch(r"DIST \S+ \d+ BLAKE2B [0-9a-f]{128} SHA512 [0-9a-f]{128}", line)
    for bad in ("", "a b.tar.gz", "dir/x.tar.gz"):
        with pytest.raises(ValueError, match="distfile"):
            gentoo.manifest_line(bad, data)


def test_agent_manifest_line_is_the_sdist_line(cfg: BuildConfig) -> None:
    line = bundle.agent_manifest_line(cfg)
    assert line == gentoo.manifest_line("piccolod-0.1.0.tar.gz", bundle.sdist_bytes(cfg))


def test_sysext_packages(lock: Lock) -> None:
    assert bundle.sysext_packages(lock) == (
        "dev-lang/python",
        "dev-python/asn1crypto",
        "dev-python/pyyaml",
        "dev-python/tpm2-pytss",
        "app-admin/piccolod",
    )
    assert "dev-python/pkgconfig" not in bundle.sysext_packages(lock), "build-only packages stay out"


def test_sysext_order_puts_dependencies_first(lock: Lock) -> None:
    asn1 = lock.package("asn1crypto")
    # Pretend asn1crypto needs tpm2-pytss and tpm2-pytss needs pyyaml only: the order must follow.
    pkgs = {p.name: p for p in lock.packages}
    pkgs["asn1crypto"] = replace(asn1, rdepend=(*asn1.rdepend, ">=dev-python/tpm2-pytss-2"))
    pkgs["tpm2-pytss"] = replace(pkgs["tpm2-pytss"], rdepend=("dev-python/pyyaml",))
    chained = replace(lock, packages=tuple(pkgs[n] for n in sorted(pkgs)))
    order = bundle.sysext_packages(chained, "app-admin/agent")
    assert order[0] == "dev-lang/python" and order[-1] == "app-admin/agent"
    assert (
        order.index("dev-python/pyyaml")
        < order.index("dev-python/tpm2-pytss")
        < order.index("dev-python/asn1crypto")
    )
    cyclic = dict(pkgs)
    cyclic["pyyaml"] = replace(pkgs["pyyaml"], rdepend=("dev-python/asn1crypto",))
    with pytest.raises(PiccoloError, match="cycle"):
        bundle.runtime_order(replace(lock, packages=tuple(cyclic[n] for n in sorted(cyclic))))


def test_every_third_party_import_of_the_agent_is_an_agent_requirement(lock: Lock) -> None:
    """The image only has what the lock and portage-stable give; an import outside the agent extra
    would fail on the device."""
    import ast
    import importlib.metadata

    from packaging.requirements import Requirement

    from piccolo_build.gentoo import normalise

    allowed = {normalise(Requirement(r).name) for r in lock.agent}
    dists = importlib.metadata.packages_distributions()
    missing = set()
    for path in AGENT_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "piccolod":
                    continue
                if not {normalise(d) for d in dists.get(top, [top])} & allowed:
                    missing.add(f"{path.relative_to(AGENT_DIR.parent)}: {name}")
    assert not missing, sorted(missing)
