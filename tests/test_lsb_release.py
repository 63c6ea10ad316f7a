"""piccolo_build.lsb_release: our update server in build_image's set_lsb_release, checked and idempotent.

The script edited here is the real ``build_library/set_lsb_release`` of every tag of the real trees;
the edited script is then run, as build_image runs it (tests/fixtures/flatcar.py), to show the
update.conf it really writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from piccolo_build.errors import PiccoloError
from piccolo_build.lsb_release import SCRIPT, heredoc_value, set_update_server
from tests.fixtures.flatcar import NEWEST_STABLE, TAGS, FlatcarTrees, run_set_lsb_release

SERVER = "https://updates.piccolo.space/v1/update/"
PUBLIC = "SERVER=https://public.update.flatcar-linux.net/v1/update/\n"


def _checkout(tree: Path, dest: Path) -> Path:
    """``tree`` with a private, writable set_lsb_release; everything else is a symlink into the shared
    tree (a real checkout is about 100 MB)."""
    dest.mkdir()
    for entry in tree.iterdir():
        if entry.name != SCRIPT.parent.name:
            (dest / entry.name).symlink_to(entry)
    (dest / SCRIPT.parent).mkdir()
    for entry in (tree / SCRIPT.parent).iterdir():
        if entry.name == SCRIPT.name:
            shutil.copy2(entry, dest / SCRIPT)
        else:
            (dest / SCRIPT.parent / entry.name).symlink_to(entry)
    return dest


@pytest.mark.parametrize("tag", TAGS)
def test_the_server_line_of_every_tags_script_is_replaced_and_the_script_still_runs(
    flatcar: FlatcarTrees, tmp_path: Path, tag: str
) -> None:
    scripts = _checkout(flatcar.tree(tag), tmp_path / "scripts")
    original = (scripts / SCRIPT).read_text()
    assert run_set_lsb_release(scripts, tmp_path / "before", "beta") == f"{PUBLIC}GROUP=beta\n"
    assert set_update_server(scripts, SERVER) is True
    assert (scripts / SCRIPT).read_text() == original.replace(PUBLIC, f"SERVER={SERVER}\n")
    assert (scripts / SCRIPT).stat().st_mode & 0o777 == 0o755
    assert run_set_lsb_release(scripts, tmp_path / "after", "beta") == f"SERVER={SERVER}\nGROUP=beta\n"


def test_idempotent_and_a_new_server_replaces_the_old_one(flatcar: FlatcarTrees, tmp_path: Path) -> None:
    scripts = _checkout(flatcar.tree(NEWEST_STABLE), tmp_path / "scripts")
    assert set_update_server(scripts, SERVER) is True
    once = (scripts / SCRIPT).read_text()
    assert set_update_server(scripts, SERVER) is False
    assert (scripts / SCRIPT).read_text() == once
    assert set_update_server(scripts, "http://u.example.test:8080/v1/update/") is True
    text = (scripts / SCRIPT).read_text()
    assert "SERVER=http://u.example.test:8080/v1/update/\nGROUP=$FLAGS_group\n" in text
    assert SERVER not in text


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("/usr/share/flatcar/update.conf", "/usr/share/flatcar/upd.conf", "no heredoc"),
        (PUBLIC, "", "expected one SERVER= line in the update.conf heredoc, found 0"),
        ("GROUP=$FLAGS_group\nEOF", "GROUP=$FLAGS_group\nSERVER=x\nEOF", "found 2"),
        ("sudo_clobber", "sudo_clobber", "more than one heredoc"),  # the script twice, below
    ],
)
def test_an_unexpected_script_is_an_error_not_a_skip(
    flatcar: FlatcarTrees, tmp_path: Path, old: str, new: str, message: str
) -> None:
    scripts = _checkout(flatcar.tree(NEWEST_STABLE), tmp_path / "scripts")
    real = (scripts / SCRIPT).read_text()
    text = real + real if message == "more than one heredoc" else real.replace(old, new)
    assert text != real
    (scripts / SCRIPT).write_text(text)
    with pytest.raises(PiccoloError) as exc:
        set_update_server(scripts, SERVER)
    assert message in exc.value.message
    assert "\n" not in exc.value.message
    assert str(scripts / SCRIPT) in exc.value.message
    assert (scripts / SCRIPT).read_text() == text  # untouched


def test_a_missing_script_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PiccoloError, match="set_lsb_release: cannot read"):
        set_update_server(tmp_path, SERVER)


def test_values_are_literal_in_the_heredoc(flatcar: FlatcarTrees, tmp_path: Path) -> None:
    # Validation keeps these out of update.server; the quoting does not depend on it.
    assert heredoc_value("https://a/$x`y`\\", quoted_delimiter=False) == "https://a/\\$x\\`y\\`\\\\"
    assert heredoc_value("https://a/$x", quoted_delimiter=True) == "https://a/$x"
    scripts = _checkout(flatcar.tree(NEWEST_STABLE), tmp_path / "scripts")
    set_update_server(scripts, "https://a/$HOME`id`")
    assert (
        run_set_lsb_release(scripts, tmp_path / "root", "beta") == "SERVER=https://a/$HOME`id`\nGROUP=beta\n"
    )
    with pytest.raises(PiccoloError, match="newline"):
        heredoc_value("https://a/\nEOF", quoted_delimiter=False)
