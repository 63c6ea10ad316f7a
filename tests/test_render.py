"""piccolo_build.render, overlay and quoting: atomic, deterministic output and safe quoting."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piccolo_build import quoting
from piccolo_build.config import BuildConfig, load_config
from piccolo_build.errors import PiccoloError
from piccolo_build.overlay import OverlayFile, overlay_files, service_times
from piccolo_build.render import MARKER, read_tree, tree, write_tree
from piccolod.model import default
from piccolod.policy import load_policy
from tests.builder_helpers import DEFAULT_CONFIG, cli, snapshot


@pytest.fixture
def tight_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def plan() -> list[OverlayFile]:
    return overlay_files(load_config(DEFAULT_CONFIG))


def test_render_twice_is_byte_identical_with_fixed_modes(tmp_path: Path, tight_umask: None) -> None:
    write_tree(plan(), tmp_path / "a")
    write_tree(plan(), tmp_path / "b")
    a, b = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert a == b
    assert {mode for _, mode in a.values()} == {0o644}
    dirs = [p for p in (tmp_path / "a").rglob("*") if p.is_dir()] + [tmp_path / "a"]
    assert {p.stat().st_mode & 0o7777 for p in dirs} == {0o755}


def test_noop_render_touches_nothing(tmp_path: Path) -> None:
    out = tmp_path / "overlays"
    assert write_tree(plan(), out) is True
    before = snapshot(out)
    assert write_tree(plan(), out) is False
    assert snapshot(out) == before


def test_changed_render_replaces_the_tree(tmp_path: Path) -> None:
    out = tmp_path / "overlays"
    write_tree(plan(), out)
    (out / "stale").write_text("left over")
    (out / "coreos-overlay" / "app-admin" / "piccolod" / "metadata.xml").chmod(0o600)
    assert write_tree(plan(), out) is True
    assert read_tree(out) == tree(plan())
    assert (out / MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["overlays"]  # no temporary directories left


def test_failed_write_leaves_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "overlays"
    write_tree(plan(), out)
    before = snapshot(out)
    clash = [
        *plan(),
        OverlayFile(PurePosixPath("x"), b"file"),
        OverlayFile(PurePosixPath("x/y"), b"under a file"),
    ]
    with pytest.raises(OSError):
        write_tree(clash, out)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["overlays"]


@pytest.mark.parametrize(
    "foreign",
    [
        "portage-stable/sys-apps/important",  # the reviewer's repro: -o .../third_party
        "coreos-overlay/sys-apps/foo/foo-1.ebuild",  # a package that is not ours, under our top-level name
        "coreos-overlay/app-admin/piccolod/files/extra/kept",  # deeper than anything we render
    ],
)
def test_refuses_to_replace_a_directory_that_is_not_ours(tmp_path: Path, foreign: str) -> None:
    third_party = tmp_path / "third_party"
    (third_party / foreign).parent.mkdir(parents=True)
    (third_party / foreign).write_text("keep\n")
    before = snapshot(tmp_path)
    with pytest.raises(PiccoloError, match="not a piccolo-build render"):
        write_tree(plan(), third_party)
    assert snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["third_party"]


def test_refusal_touches_nothing_and_keeps_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo").write_text("mine\n")
    (out / "README").write_text("mine\n")
    before = snapshot(tmp_path)
    with pytest.raises(PiccoloError, match=r"no \.piccolo-overlay"):
        write_tree(plan(), out)
    assert snapshot(tmp_path) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(PiccoloError, match="not a directory"):
        write_tree(plan(), tmp_path / "file")


def test_cli_refuses_a_foreign_directory_in_one_line(tmp_path: Path) -> None:
    third_party = tmp_path / "third_party"
    (third_party / "portage-stable" / "sys-apps").mkdir(parents=True)
    (third_party / "portage-stable" / "sys-apps" / "important").write_text("keep\n")
    before = snapshot(tmp_path)
    r = cli("render", "-c", DEFAULT_CONFIG, "-o", third_party)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines()[0] == (
        f"error: {third_party}: not a piccolo-build render (no .piccolo-overlay):"
        " refusing to replace what it holds"
    )
    assert r.stderr.splitlines()[1].startswith("hint: ")
    assert snapshot(tmp_path) == before


def test_an_empty_directory_is_replaced(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_tree(plan(), empty) is True
    assert read_tree(empty) == tree(plan())


def test_only_the_marker_makes_a_directory_ours(tmp_path: Path) -> None:
    """A directory shaped exactly like a render, holding user files, is never replaced without the
    marker: a heuristic once deleted three of a user's files this way."""
    shaped = tmp_path / "shaped"
    write_tree(plan(), shaped)
    (shaped / MARKER).unlink()
    ours = shaped / "coreos-overlay" / "app-admin" / "piccolod"
    users = [ours / "NOTES", ours / "files" / "local.conf", shaped / "coreos-overlay" / "TODO"]
    for path in users:
        path.write_text("the user's\n")
    old = next(shaped.rglob("*.ebuild"))
    old.rename(old.with_name("piccolod-0.0.1.ebuild"))  # an older version's ebuild, in our directory
    before = snapshot(tmp_path)
    with pytest.raises(PiccoloError, match=r"no \.piccolo-overlay"):
        write_tree(plan(), shaped)
    assert snapshot(tmp_path) == before
    # A marker that is not a regular file does not count either.
    (shaped / MARKER).symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("x")
    with pytest.raises(PiccoloError, match="not a piccolo-build render"):
        write_tree(plan(), shaped)
    (shaped / MARKER).unlink()
    (shaped / MARKER).mkdir()
    with pytest.raises(PiccoloError, match="not a piccolo-build render"):
        write_tree(plan(), shaped)
    assert all(path.read_text() == "the user's\n" for path in users)


def test_the_committed_overlay_carries_the_marker() -> None:
    from tests.builder_helpers import ROOT

    assert (ROOT / "overlays" / MARKER).is_file()
    assert not (ROOT / "overlays" / MARKER).is_symlink()


def test_a_symlinked_output_is_rendered_into_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real"
    write_tree(plan(), target)
    (target / "stale").write_text("left over")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert write_tree(plan(), link) is True
    assert link.is_symlink() and link.resolve() == target
    assert read_tree(target) == tree(plan())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert write_tree(plan(), link) is False
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "later")
    assert write_tree(plan(), dangling) is True
    assert read_tree(tmp_path / "later") == tree(plan())


def test_the_marker_path_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad or duplicate path"):
        write_tree([OverlayFile(MARKER, b"")], tmp_path / "o")


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../../b"])
def test_plan_paths_stay_inside(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="bad or duplicate path"):
        write_tree([OverlayFile(PurePosixPath(bad), b"")], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_vendor_policy_loads_back_in_piccolod(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    (policy,) = [f for f in overlay_files(cfg) if f.path.name == "health-policy.yaml"]
    path = tmp_path / "health-policy.yaml"
    path.write_bytes(policy.content)
    assert load_policy(path) == cfg.policy()


def test_unit_timeouts_follow_the_policy() -> None:
    cfg = default(BuildConfig)
    times = service_times(cfg)
    assert times.start_timeout == 120 + 30 + 60
    assert times.start_timeout > cfg.health_policy.startup.timeout_seconds
    assert times.start_limit_interval > 3 * times.start_timeout
    unit = next(f for f in overlay_files(cfg) if f.path.name == "piccolod.service").content.decode()
    assert "\nTimeoutStartSec=210\n" in unit
    assert "\nType=notify\n" in unit
    assert "RestartPreventExitStatus=" not in unit  # a failed gate is no exit: the agent stays up
    assert "\nRuntimeDirectory=piccolod\n" in unit and "\nRuntimeDirectoryPreserve=yes\n" in unit
    # The guard waits past the agent's own start timeout; its unit's timeout past its own wait.
    assert times.guard_wait > times.start_timeout and times.guard_timeout > times.guard_wait
    guard = next(f for f in overlay_files(cfg) if f.path.name == "piccolod-guard.service").content.decode()
    assert f"\nEnvironment=PICCOLOD_GUARD_WAIT_SECONDS={times.guard_wait}\n" in guard
    assert f"\nTimeoutStartSec={times.guard_timeout}\n" in guard


def test_the_ebuilds_install_what_the_layout_says() -> None:
    """Every file of the install layout is in its package's files/ and installed by its ebuild."""
    from piccolo_build import layout

    cfg = load_config(DEFAULT_CONFIG)
    files = {f.path: f.content for f in overlay_files(cfg)}
    ebuilds = {
        layout.Package.AGENT: files[next(p for p in files if p.name == "piccolod-0.1.0.ebuild")].decode(),
        layout.Package.BASE: files[next(p for p in files if p.name == "piccolo-base-0.1.0.ebuild")].decode(),
    }
    for e in layout.LAYOUT:
        lines = layout.install_lines(e.package)
        assert all(f"\t{line}\n" in ebuilds[e.package] for line in lines)
        if e.source is not None:
            assert any(p.name == e.source and p.parent.name == "files" for p in files), e.source
    base = ebuilds[layout.Package.BASE]
    assert 'systemd_dounit "${FILESDIR}/piccolod-guard.service"' in base
    assert "systemd_enable_service multi-user.target piccolod-start.service" in base
    assert 'newexe "${FILESDIR}/piccolod-guard.sh" piccolod-guard' in base
    assert "systemd_enable_service multi-user.target piccolod.service" in ebuilds[layout.Package.AGENT]
    assert "Upholds" not in "".join(c.decode() for c in files.values() if c.isascii())


def test_ebuilds_use_tabs_stable_keywords_and_no_systemctl() -> None:
    cfg = load_config(DEFAULT_CONFIG, overrides={"boards": "amd64-usr,arm64-usr"})
    for f in overlay_files(cfg):
        if f.path.suffix != ".ebuild":
            continue
        text = f.content.decode()
        assert "EAPI=8\n" in text
        assert "KEYWORDS='amd64 arm64'" in text
        assert "systemctl" not in text
        body = [line for line in text.splitlines() if line.startswith(" ")]
        assert body == [], f"{f.path} indents with spaces"


def test_licence_file_only_when_not_free() -> None:
    assert not [f for f in plan() if f.path.parts[0] == "licenses"]
    cfg = load_config(DEFAULT_CONFIG, overrides={"package.license": "Piccolo-EULA"})
    assert [str(f.path) for f in overlay_files(cfg) if f.path.parts[0] == "licenses"] == [
        "licenses/Piccolo-EULA"
    ]


# --- quoting -------------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)


@settings(max_examples=40, deadline=None)
@given(TEXT)
def test_bash_word_round_trips_through_real_bash(value: str) -> None:
    out = subprocess.run(
        ["bash", "-c", f"printf %s {quoting.bash_word(value)}"], capture_output=True, check=True
    ).stdout
    assert out.decode() == value


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "nul\x00"])
def test_control_characters_are_rejected_everywhere(value: str) -> None:
    for name, fn in quoting.FILTERS.items():
        with pytest.raises(quoting.UnsafeValue, match="control characters"):
            fn(value)
        assert name


@pytest.mark.parametrize("value", ["$(id)", "`id`", 'a"b', "a\\b", "${X}"])
def test_bash_dq_refuses_expansions(value: str) -> None:
    with pytest.raises(quoting.UnsafeValue):
        quoting.bash_dq(value)


def test_unit_quoting() -> None:
    assert quoting.unit_value("100%") == "100%%"
    assert quoting.unit_exec_arg("plain/arg") == "plain/arg"
    assert quoting.unit_exec_arg("has space $HOME 5%") == '"has space $$HOME 5%%"'
    assert quoting.unit_exec_arg('q"uote') == '"q\\"uote"'
    assert quoting.unit_exec_arg("-dash") == '"-dash"'
    with pytest.raises(quoting.UnsafeValue):
        quoting.unit_value("trailing\\")
    with pytest.raises(quoting.UnsafeValue):
        quoting.unit_path("/var/lib/../etc")
    with pytest.raises(quoting.UnsafeValue):
        quoting.unit_path("relative")
    assert quoting.xml_text("<a & 'b'>") == "&lt;a &amp; &apos;b&apos;&gt;"
