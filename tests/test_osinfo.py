"""The OS facts behind ``piccolod_os_info``: Flatcar's own files, the administrator's override, and
files that are missing, huge, binary, FIFOs or full of control characters (never a hang, never a
label longer than 64 printable characters)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from piccolod import osinfo
from piccolod.osinfo import UNKNOWN, OsFiles, OsInfo


def files(root: Path) -> OsFiles:
    return OsFiles(
        os_release=(root / "etc/os-release", root / "usr/lib/os-release"),
        flatcar_release=root / "usr/share/flatcar/release",
        update_conf=(root / "usr/share/flatcar/update.conf", root / "etc/flatcar/update.conf"),
    )


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


def flatcar(root: Path) -> None:
    """The three files as flatcar/scripts' build_library/set_lsb_release writes them for a release."""
    write(
        root,
        "usr/lib/os-release",
        'NAME="Flatcar Container Linux by Kinvolk"\nID=flatcar\nID_LIKE=coreos\nVERSION=4593.2.5\n'
        "VERSION_ID=4593.2.5\nBUILD_ID=2026-07-01-0000\nSYSEXT_LEVEL=1.0\n"
        'PRETTY_NAME="Flatcar Container Linux by Kinvolk 4593.2.5 (Oklo)"\nANSI_COLOR="38;5;75"\n'
        'HOME_URL="https://flatcar.org/"\nFLATCAR_BOARD="amd64-usr"\n',
    )
    write(
        root,
        "usr/share/flatcar/release",
        "FLATCAR_RELEASE_VERSION=4593.2.5\nFLATCAR_RELEASE_BOARD=amd64-usr\n"
        "FLATCAR_RELEASE_APPID={e96281a6-d1af-4bde-9a0a-97b76e56dc57}\n",
    )
    write(
        root,
        "usr/share/flatcar/update.conf",
        "SERVER=https://updates.piccolo.space/v1/update/\nGROUP=stable\n",
    )


def test_a_flatcar_machine(tmp_path: Path) -> None:
    flatcar(tmp_path)
    assert osinfo.read(files(tmp_path)) == OsInfo(version="4593.2.5", board="amd64-usr", group="stable")


def test_the_administrators_update_conf_wins_key_by_key(tmp_path: Path) -> None:
    flatcar(tmp_path)
    write(tmp_path, "etc/flatcar/update.conf", "# moved to the beta group\nGROUP='beta'\n")
    assert osinfo.read(files(tmp_path)).group == "beta"
    write(tmp_path, "etc/flatcar/update.conf", "REBOOT_STRATEGY=off\n")  # no GROUP: the vendor's stands
    assert osinfo.read(files(tmp_path)).group == "stable"


def test_etc_os_release_replaces_usr_lib_and_release_fills_gaps(tmp_path: Path) -> None:
    flatcar(tmp_path)
    write(tmp_path, "etc/os-release", "ID=flatcar\nVERSION_ID=4593.2.6\n")  # no FLATCAR_BOARD here
    info = osinfo.read(files(tmp_path))
    assert info.version == "4593.2.6"  # os-release(5): /etc/os-release is used alone, not merged
    assert info.board == "amd64-usr"  # from /usr/share/flatcar/release


def test_nothing_there_is_unknown(tmp_path: Path) -> None:
    assert osinfo.read(files(tmp_path)) == OsInfo(UNKNOWN, UNKNOWN, UNKNOWN)


def test_hostile_values_become_short_printable_labels(tmp_path: Path) -> None:
    write(
        tmp_path,
        "usr/lib/os-release",
        f"VERSION_ID='4593\x1b[31m.2.5'\nNAME={'A' * 10_000}\nFLATCAR_BOARD=\n",
    )
    write(tmp_path, "usr/share/flatcar/update.conf", b"GROUP=\xff\xfe\x00beta\x7f\n")
    info = osinfo.read(files(tmp_path))
    assert info.version == "4593[31m.2.5"  # the escape character is gone, the rest is plain text
    assert info.board == UNKNOWN  # empty
    assert info.group == "\ufffd\ufffdbeta"  # undecodable bytes replaced, NUL and DEL dropped
    write(tmp_path, "usr/lib/os-release", "VERSION_ID=" + "7" * 500 + "\n")
    assert osinfo.read(files(tmp_path)).version == "7" * osinfo.MAX_VALUE


@pytest.mark.parametrize("kind", ["fifo", "huge", "directory", "dangling link"])
def test_unusable_files_count_as_absent_without_blocking(tmp_path: Path, kind: str) -> None:
    flatcar(tmp_path)
    target = tmp_path / "etc/os-release"  # would replace /usr/lib/os-release if it could be read
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "huge":
        target.write_text("VERSION_ID=9999\n" + "#" * (osinfo.MAX_BYTES + 1))
    elif kind == "directory":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / "nowhere")
    started = time.monotonic()
    info = osinfo.read(files(tmp_path))
    assert time.monotonic() - started < 1
    assert info.version == "4593.2.5"  # /usr/lib/os-release, as if /etc/os-release were not there


def test_a_symbolic_link_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    """Flatcar's /etc/os-release is a link to ../usr/lib/os-release."""
    flatcar(tmp_path)
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert osinfo.read(files(tmp_path)).version == "4593.2.5"
