"""The update-loop pin: update.conf read as update_engine reads it, written without losing a byte of the
rest, hostile files refused; ``piccolod unpin`` and ``piccolod status``."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from piccolod.updates import pin
from piccolod.updates.pin import KEY, PinError, engine_values

PICCOLOD = [sys.executable, "-m", "piccolod"]


def test_update_engine_reads_the_pin_and_nothing_else_changes(tmp_path: Path) -> None:
    conf = tmp_path / "update.conf"
    before = "GROUP=beta\nSERVER=https://updates.example.com/v1/update/\nFLATCAR_RELEASE_VERSION=1.0\n  x = y"
    conf.write_text(before)
    conf.chmod(0o640)
    got = pin.pin("3975.2.0", "failed its gate = on USR-B", conf)
    assert got == pin.Pin("3975.2.0", True, str(conf))
    text = conf.read_text()
    assert text.startswith(before + "\n")
    assert engine_values(text)[KEY] == "3975.2.0"  # the last line of a key wins: the pin overrides 1.0
    assert engine_values(text)["GROUP"] == "beta"
    mark = text.splitlines()[-2]
    assert mark.startswith(pin.MARK) and "=" not in mark  # a comment is nothing to update_engine
    assert conf.stat().st_mode & 0o777 == 0o640
    assert pin.read(conf) == got
    pin.pin("3975.2.1", "again", conf)  # one pin at a time
    assert conf.read_text().count(pin.MARK) == 1
    assert pin.unpin(conf) == pin.Pin("3975.2.1", True, str(conf))
    assert conf.read_text() == before + "\n"
    assert pin.unpin(conf) is None


def test_a_pin_alone_goes_with_its_file(tmp_path: Path) -> None:
    conf = tmp_path / "flatcar" / "update.conf"
    pin.pin("3975.2.0", "failed", conf)
    assert conf.stat().st_mode & 0o777 == 0o644
    assert pin.unpin(conf) is not None
    assert not conf.exists()


def test_a_later_line_overrides_the_pin(tmp_path: Path) -> None:
    conf = tmp_path / "update.conf"
    pin.pin("3975.2.0", "failed", conf)
    conf.write_text(conf.read_text() + f"{KEY}=4000.0.0\n")
    found = pin.read(conf)
    assert found is not None and not found.effective


@pytest.mark.parametrize("version", ["", "a b", "1.2\n3", "x" * 65, "-1", "1=2", "1.2.3\x1b[31m"])
def test_only_a_version_is_pinned(tmp_path: Path, version: str) -> None:
    with pytest.raises(PinError, match="not a version to pin"):
        pin.pin(version, "failed", tmp_path / "update.conf")
    assert not (tmp_path / "update.conf").exists()


def test_hostile_files_are_refused_and_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("GROUP=stable\n")
    link = tmp_path / "link.conf"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * (pin.MAX_BYTES + 1))
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"GROUP=\xff\xfe\n")
    nul = tmp_path / "nul.conf"
    nul.write_bytes(b"GROUP=a\0b\n")
    for path, why in [
        (link, "symbolic link"),
        (fifo, "not a regular file"),
        (big, "larger than"),
        (binary, "not UTF-8"),
        (nul, "NUL"),
        (tmp_path, "not a regular file"),
    ]:
        for act in (lambda p: pin.pin("1.2.3", "x", p), pin.unpin, pin.read):
            with pytest.raises(PinError, match=why) as info:
                act(path)
            assert "\n" not in str(info.value)
    assert target.read_text() == "GROUP=stable\n"
    assert big.stat().st_size == pin.MAX_BYTES + 1


def test_random_files_keep_every_other_byte() -> None:
    """Seeded fuzz: whatever update.conf holds (text update_engine accepts), pinning makes the pin what
    update_engine sends, and unpinning gives the file back as it was (plus a final newline)."""
    rng = random.Random(1924)
    alphabet = ["\n", "=", "#", " ", "'", '"', "\r", "\t", KEY, pin.MARK, "GROUP", "x", "é", "1.2"]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "update.conf"
        for _ in range(500):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            conf.write_bytes(text.encode())
            had = pin.read(conf)
            pin.pin("3975.2.0", rng.choice(["x", "a=b\nc", "\x1b"]), conf)
            assert engine_values(conf.read_bytes().decode())[KEY] == "3975.2.0"
            found = pin.read(conf)
            assert found is not None and found.effective
            pin.unpin(conf)
            if had is None and pin.MARK not in text:
                left = conf.read_bytes().decode() if conf.exists() else ""  # no newline translation
                assert left in (text, text + "\n") or (not text.strip() and left == "")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PICCOLOD, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_unpin_command(tmp_path: Path) -> None:
    conf = Path(os.environ[pin.UPDATE_CONF_ENV])
    r = run("unpin")
    assert (r.returncode, r.stdout.strip()) == (0, f"no update-loop pin in {conf}")
    pin.pin("3975.2.0", "failed", conf)
    r = run("unpin")
    assert r.returncode == 0 and r.stdout.startswith("unpinned 3975.2.0"), r
    assert pin.read(conf) is None if conf.exists() else True
    conf.write_bytes(b"\xff" * 10)
    r = run("unpin")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"piccolod: {conf}: not UTF-8"), r.stderr
    assert "Traceback" not in r.stderr
    r = run("unpin", "--force")
    assert r.returncode == 3 and "unrecognized arguments" in r.stderr
