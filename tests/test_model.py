"""piccolod.model: the YAML subset configurations may use, its limits, and one-line errors.

Both programs read their configuration through this module (piccolo.yaml, the agent's policies, the
lock), so every refusal here is a refusal everywhere. Each case names the line and key it blames.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from piccolod import model
from piccolod.model import KeyPath, MissingFile, ModelError, Source, load_file, merge, parse_yaml
from piccolod.text import printable

# (name, text, line, key, words in the message)
REFUSED: list[tuple[str, str, int, str, str]] = [
    ("anchor", "a: &x 1\nb: 2\n", 1, "a", "anchors (&x) are not allowed"),
    ("alias", "a: 1\nb:\n  - *x\n", 3, "b[0]", "aliases (*x) are not allowed"),
    ("anchor-on-mapping", "a:\n  b: &m {c: 1}\n", 2, "a.b", "anchors (&m)"),
    ("merge-key", "a: {b: 1}\nc:\n  <<: {b: 2}\n", 3, "c", "merge keys (<<) are not allowed"),
    ("merge-value", "a: <<\n", 1, "a", "merge keys (<<)"),
    ("bool-maybe", "a:\n  b: !!bool maybe\n", 2, "a.b", "'maybe' is not a valid !!bool"),
    ("int-word", "a: !!int twelve\n", 1, "a", "'twelve' is not a valid !!int"),
    ("float-word", "a: !!float fast\n", 1, "a", "'fast' is not a valid !!float"),
    ("null-word", "a: !!null nothing\n", 1, "a", "'nothing' is not a valid !!null"),
    ("python-tag", "a: !!python/object:os.system ls\n", 1, "a", "tag tag:yaml.org,2002:python/object"),
    ("local-tag", "a: !secret x\n", 1, "a", "tag !secret is not allowed"),
    ("set-tag", "a: !!set {x: null}\n", 1, "a", "tag tag:yaml.org,2002:set is not allowed"),
    ("omap-tag", "a: !!omap [{x: 1}]\n", 1, "a", "tag tag:yaml.org,2002:omap is not allowed"),
    ("binary-tag", "a: !!binary aGk=\n", 1, "a", "tag tag:yaml.org,2002:binary is not allowed"),
    ("seq-tag-on-map", "a: !!seq {x: 1}\n", 1, "a", "tag tag:yaml.org,2002:seq is not allowed"),
    ("complex-key", "? [a, b]\n: 1\n", 1, "", "keys must be plain text"),
    ("duplicate-key", "a: 1\nb: 2\na: 3\n", 3, "a", "duplicate key"),
    ("two-documents", "a: 1\n---\nb: 2\n", 2, "", "more than one YAML document"),
    ("long-value", "a: " + "x" * 4097 + "\n", 1, "a", "a value longer than 4096 characters"),
    ("long-key", "? " + "k" * 4097 + "\n: 1\n", 1, "", "a key longer than 4096 characters"),
    ("long-number", "a: " + "9" * 41 + "\n", 1, "a", "a number longer than 40 characters"),
    ("huge-integer", "a:\n  b: " + "9" * 5000 + "\n", 2, "a.b", "longer than 4096 characters"),
    ("tagged-huge-integer", "a: !!int " + "1" * 4000 + "\n", 1, "a", "a number longer than 40"),
    (
        "too-deep",
        "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 33)),
        33,
        "a." + ".".join(f"k{i}" for i in range(1, 32)),
        "nested deeper than 32 levels",
    ),
    ("too-deep-flow", "a: " + "[" * 40 + "]" * 40 + "\n", 1, "a" + "[0]" * 31, "nested deeper than 32"),
    # Every node counts: the top mapping, the key, the list, then 9,997 items.
    ("too-many", "a: [" + ",".join(["1"] * 10_001) + "]\n", 1, "a[9997]", "more than 10000 values"),
    ("escape-char", "a: \x1b[31mred\n", 1, "", "character U+001B is not allowed in YAML"),
    ("nul-char", "a: 1\nb: \x00\n", 2, "", "character U+0000 is not allowed"),
    ("malformed", "a: [1\n", 2, "", "malformed YAML"),
]


@pytest.mark.parametrize(("name", "text", "line", "key", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(name: str, text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ModelError) as exc:
        parse_yaml(text, "f.yaml")
    err = exc.value
    assert (err.line, err.key) == (line, key), str(err)
    assert words in err.message, err.message
    assert str(err).startswith(f"f.yaml:{line}: " + (f"{key}: " if key else "")), str(err)
    assert "\n" not in str(err)
    assert str(err).isprintable()


def test_the_core_schema_is_accepted() -> None:
    text = (
        "s: !!str 12\nn: !!null ~\nb: !!bool yes\ni: !!int 0x1F\nf: !!float 1\nq: '12'\nbang: ! 12\n"
        "seq: !!seq [1, 2.5, true, null]\nmap: !!map {x: y}\ndate: 2024-01-01\nempty:\nyes: on\n"
    )
    data, _ = parse_yaml(text, "f")
    assert data == {
        "s": "12",
        "n": None,
        "b": True,
        "i": 31,
        "f": 1.0,
        "q": "12",
        "bang": "12",
        "seq": [1, 2.5, True, None],
        "map": {"x": "y"},
        "date": "2024-01-01",  # dates stay text: no model wants a datetime
        "empty": None,
        "yes": True,  # keys are text as written; values resolve as YAML 1.1 (PyYAML's safe loader)
    }


def test_the_limits_themselves_are_accepted() -> None:
    deep = "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 32))
    assert parse_yaml(deep, "f")[0]["a"]["k1"]["k2"] is not None
    assert parse_yaml("a: " + "x" * 4096 + "\n", "f")[0]["a"] == "x" * 4096
    assert parse_yaml("a: " + "9" * 40 + "\n", "f")[0]["a"] == int("9" * 40)
    assert len(parse_yaml("a: [" + ",".join(["1"] * 9_997) + "]\n", "f")[0]["a"]) == 9_997


@pytest.mark.parametrize("text", ["", "# only a comment\n", "   \n\n"])
def test_no_document_is_an_empty_mapping(text: str) -> None:
    assert parse_yaml(text, "f")[0] == {}


def test_lines_of_keys_and_items() -> None:
    data, src = parse_yaml("a:\n  b:\n    - x\n    - y\nc: 1\n", "f")
    assert data == {"a": {"b": ["x", "y"]}, "c": 1}
    assert src.lines[("a", "b", 1)] == ("f", 4)
    assert src.lines[("c",)] == ("f", 5)


# --- reading files ---------------------------------------------------------------------------------


def test_a_file_larger_than_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * model.MAX_BYTES + b"\n")
    with pytest.raises(ModelError, match=rf"^{big}: larger than 256 KiB$"):
        load_file(big)
    with pytest.raises(ModelError, match=r"^text: larger than 256 KiB$"):
        parse_yaml("#" * (model.MAX_BYTES + 1), "text")


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.append(_error_of(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert errors == [f"{fifo}: cannot read: not a regular file"]
    assert _error_of(Path("/dev/zero")) == "/dev/zero: cannot read: not a regular file"
    assert _error_of(tmp_path) == f"{tmp_path}: cannot read: not a regular file"


def _error_of(path: Path) -> str:
    try:
        load_file(path)
    except ModelError as exc:
        return str(exc)
    return "read"


def test_missing_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(MissingFile, match="No such file or directory"):
        load_file(tmp_path / "absent.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: 1\nb: 2\nc: \xff\xfe\n")
    with pytest.raises(ModelError, match=rf"^{binary}:3: not UTF-8 text$"):
        load_file(binary)
    link = tmp_path / "link.yaml"
    link.symlink_to(tmp_path / "loop.yaml")
    (tmp_path / "loop.yaml").symlink_to(link)
    with pytest.raises(ModelError, match="cannot read: Too many levels of symbolic links"):
        load_file(link)


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("a: 1\n")
    (tmp_path / "link.yaml").symlink_to(real)
    data, src = load_file(tmp_path / "link.yaml")
    assert data == {"a": 1}
    assert src.file == str(tmp_path / "link.yaml")
    assert stat.S_ISLNK((tmp_path / "link.yaml").lstat().st_mode)


# --- the error line ---------------------------------------------------------------------------------


def test_errors_escape_what_they_quote() -> None:
    err = ModelError("dir/\x1b[2Jf.yaml", 3, "a\nb.\x1b[31mc", "got 'x\ty'\r\u202e")
    text = str(err)
    assert text == "dir/\\x1b[2Jf.yaml:3: a\\nb.\\x1b[31mc: got 'x\\ty'\\r\\u202e"
    assert text.isprintable()
    with pytest.raises(ModelError) as exc:
        parse_yaml('"key\\nwith\\e[31m escapes": 1\nx: !!bool "\\e]0;title\\a"\n', "f")
    assert str(exc.value) == "f:2: x: '\\x1b]0;title\\x07' is not a valid !!bool"


def test_printable_cuts_long_text() -> None:
    assert printable("x" * 1005) == "x" * 1000 + "... (5 more characters)"
    assert printable("tab\there", limit=5) == "tab\\t... (4 more characters)"


# --- merging -------------------------------------------------------------------------------------------


def test_merge_blames_the_overriding_file() -> None:
    base, base_src = parse_yaml("a:\n  b: 1\n  c: [1, 2, 3]\nd: 4\n", "vendor")
    over, over_src = parse_yaml("a:\n  c: [9]\n", "admin")
    merged = merge(base, over, base_src, over_src)
    assert merged == {"a": {"b": 1, "c": [9]}, "d": 4}
    assert base_src.locate(("a", "c", 0)) == ("admin", 2)
    assert base_src.locate(("a", "b")) == ("vendor", 2)
    assert base_src.locate(("a",)) == ("admin", 1)
    assert base_src.locate(()) == ("vendor", 1)
    assert merge({"a": 1}, [1], Source("v"), Source("o", {(): ("o", 1)})) == [1]


def test_merge_of_many_keys_is_not_quadratic() -> None:
    """4,999 keys on both sides (about the most a file may hold): one pass over the lines."""
    text = "".join(f"k{i}: {i}\n" for i in range(4_999))
    base, base_src = parse_yaml(text, "vendor")
    over, over_src = parse_yaml(text, "admin")
    lines_seen = 0

    class Counting(dict[KeyPath, tuple[str, int]]):
        def items(self) -> Iterator[tuple[KeyPath, tuple[str, int]]]:  # type: ignore[override]
            nonlocal lines_seen
            for item in super().items():
                lines_seen += 1
                yield item

    over_src.lines = Counting(over_src.lines)
    assert merge(base, over, base_src, over_src) == over
    assert lines_seen <= len(over_src.lines)
