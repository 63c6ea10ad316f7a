"""piccolo_build.lsb_release: our update server in build_image's set_lsb_release, checked and idempotent.

The scripts edited here are stand-ins shaped like flatcar/scripts' ``build_library/set_lsb_release``
(the fake SDK's, and a variant with the real script's ``sudo_clobber`` helper); the edited script is
then run with bash to show what update.conf it really writes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from piccolo_build.errors import PiccoloError
from piccolo_build.lsb_release import SCRIPT, heredoc_value, set_update_server
from tests.fixtures.fakesdk import SET_LSB_RELEASE

SERVER = "https://updates.piccolo.space/v1/update/"
PUBLIC = "SERVER=https://public.update.flatcar-linux.net/v1/update/\n"
# The real script writes release files through a helper that runs ``sudo tee``.
CLOBBER_SHAPED = """#!/bin/bash
set -euo pipefail
sudo_clobber() { cat >"$1"; }
ROOT_FS_DIR=$1
FLAGS_group=$2
sudo_clobber "${ROOT_FS_DIR}/usr/share/flatcar/release" <<EOF
FLATCAR_RELEASE_VERSION=1.2.3
EOF

sudo_clobber "${ROOT_FS_DIR}/usr/share/flatcar/update.conf" <<EOF
SERVER=https://public.update.flatcar-linux.net/v1/update/
GROUP=$FLAGS_group
EOF

sudo_clobber "${ROOT_FS_DIR}/etc/flatcar/update.conf" <<EOF
GROUP=$FLAGS_group
EOF
"""


def _checkout(tmp_path: Path, text: str) -> Path:
    script = tmp_path / SCRIPT
    script.parent.mkdir(parents=True)
    script.write_text(text)
    script.chmod(0o755)
    return tmp_path


def _update_conf(scripts: Path, tmp_path: Path) -> str:
    root = tmp_path / "root"
    (root / "usr/share/flatcar").mkdir(parents=True)
    (root / "etc/flatcar").mkdir(parents=True)
    subprocess.run(["bash", str(scripts / SCRIPT), str(root), "beta"], check=True)
    return (root / "usr/share/flatcar/update.conf").read_text()


def test_the_server_line_is_replaced_and_the_script_still_writes_update_conf(tmp_path: Path) -> None:
    scripts = _checkout(tmp_path, CLOBBER_SHAPED)
    assert set_update_server(scripts, SERVER) is True
    text = (scripts / SCRIPT).read_text()
    assert text == CLOBBER_SHAPED.replace(PUBLIC, f"SERVER={SERVER}\n")
    assert (scripts / SCRIPT).stat().st_mode & 0o777 == 0o755
    assert _update_conf(scripts, tmp_path) == f"SERVER={SERVER}\nGROUP=beta\n"


def test_idempotent_and_a_new_server_replaces_the_old_one(tmp_path: Path) -> None:
    scripts = _checkout(tmp_path, SET_LSB_RELEASE)
    assert set_update_server(scripts, SERVER) is True
    once = (scripts / SCRIPT).read_text()
    assert set_update_server(scripts, SERVER) is False
    assert (scripts / SCRIPT).read_text() == once
    assert set_update_server(scripts, "http://u.example.test:8080/v1/update/") is True
    text = (scripts / SCRIPT).read_text()
    assert "SERVER=http://u.example.test:8080/v1/update/\nGROUP=$group\n" in text
    assert SERVER not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            CLOBBER_SHAPED.replace("/usr/share/flatcar/update.conf", "/usr/share/flatcar/upd.conf"),
            "no heredoc",
        ),
        (CLOBBER_SHAPED.replace(PUBLIC, ""), "expected one SERVER= line in the update.conf heredoc, found 0"),
        (CLOBBER_SHAPED + CLOBBER_SHAPED, "more than one heredoc"),
    ],
)
def test_an_unexpected_script_is_an_error_not_a_skip(tmp_path: Path, text: str, message: str) -> None:
    scripts = _checkout(tmp_path, text)
    with pytest.raises(PiccoloError) as exc:
        set_update_server(scripts, SERVER)
    assert message in exc.value.message
    assert "\n" not in exc.value.message
    assert str(scripts / SCRIPT) in exc.value.message
    assert (scripts / SCRIPT).read_text() == text  # untouched


def test_a_missing_script_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PiccoloError, match="set_lsb_release: cannot read"):
        set_update_server(tmp_path, SERVER)


def test_values_are_literal_in_the_heredoc(tmp_path: Path) -> None:
    # Validation keeps these out of update.server; the quoting does not depend on it.
    assert heredoc_value("https://a/$x`y`\\", quoted_delimiter=False) == "https://a/\\$x\\`y\\`\\\\"
    assert heredoc_value("https://a/$x", quoted_delimiter=True) == "https://a/$x"
    scripts = _checkout(tmp_path, CLOBBER_SHAPED)
    set_update_server(scripts, "https://a/$HOME`id`")
    assert _update_conf(scripts, tmp_path) == "SERVER=https://a/$HOME`id`\nGROUP=beta\n"
    with pytest.raises(PiccoloError, match="newline"):
        heredoc_value("https://a/\nEOF", quoted_delimiter=False)
