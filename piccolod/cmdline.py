"""The kernel command line, read the way the initrd reads it when it mounts /usr.

The booted slot is the partition mounted on /usr (:mod:`piccolod.usrmount`); the command line is only
checked against it (:mod:`piccolod.slot`), never used to look a partition up. This module gives the
readings that check compares, byte for byte; ``piccolod-guard`` implements the same rules in awk, and
both are held to one table of cases (``tests/fixtures/cmdline_cases.json``) and to each other.

Two programs read the command line to mount /usr on Flatcar, and both readings are given:

- **systemd-fstab-generator** in the initrd (systemd's ``src/fstab-generator/fstab-generator.c``) writes
  ``sysusr-usr.mount`` from ``mount.usr=`` (:func:`usr_what`). Words are split as ``proc_cmdline`` does
  (``src/basic/proc-cmdline.c``, ``extract_first_word`` with ``EXTRACT_UNQUOTE | EXTRACT_RELAX |
  EXTRACT_RETAIN_ESCAPE``): on space, tab, newline and carriage return; a single or double quote anywhere
  in a word opens a quoted run up to the same quote (or the end) and the quotes are dropped; backslashes
  are plain characters. In a key, ``-`` and ``_`` are the same character; ``rd.mount.usr`` is not
  ``mount.usr`` for this generator; the last occurrence of a key wins. Without ``mount.usr=``, a
  ``usrhash=`` names ``/dev/mapper/usr``, and when ``mount.usrfstype=`` or ``mount.usrflags=`` is given
  ``root=`` (or ``roothash=``'s ``/dev/mapper/root``) is mounted as /usr too. ``gpt-auto`` mounts nothing
  here. ``LABEL=``, ``UUID=``, ``PARTUUID=`` and ``PARTLABEL=`` become ``/dev/disk/by-*/`` paths with one
  pair of outer quotes removed and the value escaped as udev names links (``src/shared/fstab-util.c``,
  ``src/basic/device-nodes.c``): ASCII letters, digits and ``#+-.:=@_`` and valid UTF-8 characters stay,
  every other byte becomes ``\\xNN``. PARTUUIDs keep their case. systemd 252 and 257 differ in a few
  corners (an empty ``mount.usr=``, ``mount.usrfstype=``, ``root=`` or ``usrhash=`` unsets the key in
  257 and is an empty value in 252; 257 mounts nothing for ``fstab``): where they differ the reading is
  :data:`AMBIGUOUS`.
- **Flatcar's early init** (``minimal-init`` in flatcar/bootengine, used from stable-4593 on) mounts
  /usr itself before systemd starts, and reads ``mount.usr=`` (else ``usr=``) and ``verity.usr=`` with
  ``for arg in $(cat /proc/cmdline)``: words split on space, tab and newline only, no quote removal, the
  key is everything before the first ``=`` (the whole word without one), the last match wins
  (:func:`flatcar_usr`, :func:`flatcar_verity_usr`). A word with ``*``, ``?`` or ``[`` would be a glob
  there, so such a line gives :data:`AMBIGUOUS`.

The line itself: one trailing newline is dropped (``/proc/cmdline`` ends with one). A NUL byte or a line
break before the end is refused (:class:`CmdlineError`): systemd reads only the first line of
``/proc/cmdline`` but all of a line given otherwise, so such a line has no one reading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from piccolod.safefile import UnsafeFile, read_regular

MAX_BYTES = 64 * 1024  # the kernel's own limit is 2 KiB (x86) to 4 KiB (arm64)
SYSTEMD_SEPARATORS = b" \t\n\r"  # systemd's WHITESPACE
SHELL_SEPARATORS = b" \t\n"  # the shell's default IFS
QUOTES = b"'\""
_DEVNODE_SAFE = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#+-.:=@_")
# The lead bytes of UTF-8 sequences of 2 to 6 bytes, and the largest code point each length can hold.
_UTF8_LEADS = ((0xC0, 0xDF, 2), (0xE0, 0xEF, 3), (0xF0, 0xF7, 4), (0xF8, 0xFB, 5), (0xFC, 0xFD, 6))
_UTF8_SHORTEST = ((1, 0x80), (2, 0x800), (3, 0x10000), (4, 0x200000), (5, 0x4000000), (6, 1 << 31))
_USR_KEYS = (b"mount.usr", b"mount.usrfstype", b"mount.usrflags", b"root", b"usrhash", b"roothash")
_TAGS = (
    (b"LABEL=", b"label"),
    (b"UUID=", b"uuid"),
    (b"PARTUUID=", b"partuuid"),
    (b"PARTLABEL=", b"partlabel"),
)


class _Ambiguous:
    """The marker of a line two readers (or two systemd versions) read differently."""

    def __repr__(self) -> str:
        return "AMBIGUOUS"


AMBIGUOUS: Final = _Ambiguous()
Reading = bytes | None | _Ambiguous


class CmdlineError(Exception):
    """The command line cannot be read, or has no single reading; ``str()`` is one line."""


def read(path: str | os.PathLike[str]) -> bytes:
    """The command line in ``path`` without its trailing newline; raises :class:`CmdlineError`."""
    try:
        data = read_regular(
            Path(path), MAX_BYTES + 1, follow=True
        )  # one byte more: "too long" is ours to say
    except UnsafeFile as e:
        raise CmdlineError(f"{e}: cannot read the kernel command line") from None
    if data is None:
        raise CmdlineError(
            f"{os.fspath(path)}: cannot read the kernel command line: No such file or directory"
        )
    return checked(data, str(path))


def checked(data: bytes, name: str = "the kernel command line") -> bytes:
    """``data`` without one trailing newline, refused when it is not one line of at most 64 KiB."""
    if len(data) > MAX_BYTES:
        raise CmdlineError(f"{name}: longer than {MAX_BYTES} bytes")
    line = data[:-1] if data.endswith(b"\n") else data
    if b"\0" in line:
        raise CmdlineError(f"{name}: holds a NUL byte")
    if b"\n" in line:
        raise CmdlineError(f"{name}: holds a line break before its end")
    return line


# --- systemd -----------------------------------------------------------------------------------------


def systemd_words(line: bytes) -> list[bytes]:
    """``proc_cmdline``'s words: quotes removed anywhere, backslashes kept, unbalanced quotes run on."""
    words: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in SYSTEMD_SEPARATORS:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        quote = 0
        while i < n:
            c = line[i]
            i += 1
            if quote:
                if c == quote:
                    quote = 0
                else:
                    word.append(c)
            elif c in QUOTES:
                quote = c
            elif c in SYSTEMD_SEPARATORS:
                break
            else:
                word.append(c)
        words.append(bytes(word))


def _key_is(key: bytes, name: bytes) -> bool:
    """``proc_cmdline_key_streq``: equal, with ``-`` and ``_`` the same character."""
    return len(key) == len(name) and all(
        a == b or (a in b"-_" and b in b"-_") for a, b in zip(key, name, strict=True)
    )


def _utf8_length(data: bytes, i: int) -> int:
    """The length of the valid UTF-8 character at ``data[i]`` as systemd's ``utf8_encoded_valid_unichar``
    judges it (overlong forms, surrogates and non-characters are not valid), else 0."""
    lead = data[i]
    if lead < 0x80:
        return 1
    length = next((n for low, high, n in _UTF8_LEADS if low <= lead <= high), 0)
    if not length or len(data) - i < length or any(b & 0xC0 != 0x80 for b in data[i + 1 : i + length]):
        return 0
    code = lead & (0x7F >> length)
    for b in data[i + 1 : i + length]:
        code = code << 6 | b & 0x3F
    shortest = next(n for n, top in _UTF8_SHORTEST if code < top)
    if shortest != length or code >= 0x110000 or code & 0xFFFFF800 == 0xD800:
        return 0
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        return 0
    return length


def devnode_escape(value: bytes) -> bytes:
    """A value as udev (and systemd's ``encode_devnode_name``) writes it into a ``/dev/disk/by-*/`` name."""
    out = bytearray()
    i = 0
    while i < len(value):
        length = _utf8_length(value, i)
        if length > 1:
            out += value[i : i + length]
            i += length
            continue
        c = value[i]
        out += bytes([c]) if c in _DEVNODE_SAFE else b"\\x%02x" % c
        i += 1
    return bytes(out)


def udev_node(value: bytes) -> bytes:
    """``fstab_node_to_udev_node``: ``LABEL=x`` -> ``/dev/disk/by-label/x`` and so on; paths stay."""
    for prefix, by in _TAGS:
        if value.startswith(prefix):
            tag = value[len(prefix) :]
            if len(tag) >= 2 and tag[0] in QUOTES and tag[-1] == tag[0]:
                tag = tag[1:-1]
            return b"/dev/disk/by-" + by + b"/" + devnode_escape(tag)
    return value


def usr_what_of(line: bytes, systemd: int) -> bytes | None:
    """What systemd ``systemd`` (252 or 257) mounts as /usr in the initrd for ``line``, or None."""
    values: dict[bytes, bytes | None] = dict.fromkeys(_USR_KEYS)
    for word in systemd_words(line):
        key, eq, value = word.partition(b"=")
        name = next((k for k in _USR_KEYS if _key_is(key, k)), None)
        if not eq or name is None:
            continue  # a key without a value is ignored by every key read here
        if name == b"mount.usrflags":
            before = values[name]
            values[name] = value if before is None else before + b"," + value
        else:  # an empty value unsets the key in 257 (empty_to_null), is an empty value in 252
            values[name] = None if systemd >= 257 and not value else value
    usr, root = values[b"mount.usr"], values[b"root"]
    if usr is None and values[b"usrhash"] is not None:
        usr = b"/dev/mapper/usr"
    if root is None and values[b"roothash"] is not None:
        root = b"/dev/mapper/root"
    if usr is None and values[b"mount.usrfstype"] is None and values[b"mount.usrflags"] is None:
        return None
    if usr is None:
        usr = root
    if not usr or usr == b"gpt-auto" or (systemd >= 257 and usr == b"fstab"):
        return None
    return udev_node(usr)


SYSTEMD_VERSIONS = (252, 257)


def usr_what(line: bytes) -> Reading:
    """The initrd's /usr ``What=`` when systemd 252 and 257 agree on it, else :data:`AMBIGUOUS`."""
    readings = {usr_what_of(line, v) for v in SYSTEMD_VERSIONS}
    return readings.pop() if len(readings) == 1 else AMBIGUOUS


# --- Flatcar's early init ----------------------------------------------------------------------------


def shell_words(line: bytes) -> list[bytes]:
    """``$(cat /proc/cmdline)`` split by the shell's default IFS (no quote removal)."""
    words, word = [], bytearray()
    for c in line:
        if c in SHELL_SEPARATORS:
            if word:
                words.append(bytes(word))
                word = bytearray()
        else:
            word.append(c)
    if word:
        words.append(bytes(word))
    return words


def _shell_arg(words: list[bytes], name: bytes) -> bytes | None:
    value = None
    for word in words:
        key, _eq, rest = word.partition(b"=")
        if key == name:
            value = rest if _eq else word  # ${arg#*=} leaves a word without '=' as it is
    return value


def _flatcar_words(line: bytes) -> list[bytes] | None:
    words = shell_words(line)
    return None if any(c in w for w in words for c in b"*?[") else words


def flatcar_usr(line: bytes) -> Reading:
    """What Flatcar's early init mounts as /usr: ``mount.usr=``, else ``usr=`` (None: neither)."""
    words = _flatcar_words(line)
    if words is None:
        return AMBIGUOUS
    value = _shell_arg(words, b"mount.usr")
    return _shell_arg(words, b"usr") if value is None else value


def flatcar_verity_usr(line: bytes) -> Reading:
    """The partition Flatcar's early init opens as ``/dev/mapper/usr``: ``verity.usr=`` (None: none)."""
    words = _flatcar_words(line)
    return AMBIGUOUS if words is None else _shell_arg(words, b"verity.usr")
