"""Typed, frozen configuration models loaded from YAML with file:line:key errors.

One small engine serves both programs: the agent's policy (``piccolod.policy``) and the builder's
``piccolo.yaml`` (``piccolo_build.config``) are frozen dataclasses; this module turns YAML text into
them, rejecting unknown keys, wrong types and invalid values with a one-line message that names the
file, the line and the dotted key. It also derives a JSON Schema and the list of leaf keys from the
same dataclasses, so the file format, the environment overrides and the schema cannot drift apart.

A field's help text and value check live in its ``metadata``::

    port: int = field(default=8080, metadata=meta("HTTP port", check=port_number))

A ``check`` returns the (possibly normalised) value or raises ``ValueError`` with the reason.
Cross-field rules go in a ``validate()`` method that raises :class:`FieldError` with the key path
(relative to that object) of the offending key.

Two shapes beyond plain nesting, both for the checks an operator names:

- **keys of the user's own**: a mapping whose known keys are fields and whose other keys are names the
  user chose. The one ``dict[str, T]`` field marked ``meta(..., extra=True)`` collects every key that is
  not another field (its own name is not a key); :func:`to_plain` writes them back beside the fields.
- **a union of dataclasses told apart by ``kind``**: every member has a ``kind: str`` field whose
  default names it; the value's ``kind`` picks the member, so an error names the right keys.

A field marked ``meta(..., omit_default=True)`` is left out by ``to_plain(..., omit_defaults=True)``
while it holds its default (the serialised vendor policy lists options only where they are set).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import stat
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from piccolod.text import printable

T = TypeVar("T")
KeyPath = tuple[str | int, ...]


class ModelError(Exception):
    """A configuration value is wrong. ``str()`` is the one-line message users see."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        # Keys, values and file names come from the input: never let them split the line or reach
        # the terminal as escape sequences.
        where = printable(f"{self.file}:{self.line}" if self.line else self.file)
        message = printable(self.message)
        return f"{where}: {printable(self.key)}: {message}" if self.key else f"{where}: {message}"


class MissingFile(ModelError):
    """The file does not exist (a ModelError like any other, for callers that need not care)."""


class FieldError(ValueError):
    """Raised by a model's ``validate()`` to blame one key (path relative to that model)."""

    def __init__(self, path: KeyPath | str, message: str) -> None:
        self.path: KeyPath = tuple(path.split(".")) if isinstance(path, str) else path
        super().__init__(message)


def meta(
    help: str,
    *,
    check: Callable[[Any], Any] | None = None,
    extra: bool = False,
    omit_default: bool = False,
) -> dict[str, Any]:
    """Field metadata: a help text for the schema and ``--help``, an optional value check; ``extra``
    marks the field that collects the keys of the user's own, ``omit_default`` a field that
    ``to_plain(omit_defaults=True)`` leaves out while it holds its default."""
    return {"help": help, "check": check, "extra": extra, "omit_default": omit_default}


def extra_field(cls: type[Any]) -> dataclasses.Field[Any] | None:
    """The field of ``cls`` that collects the keys of the user's own, if it has one."""
    return next((f for f in dataclasses.fields(cls) if f.metadata.get("extra")), None)


KIND = "kind"
# A dataclass with this class attribute set to True reads past keys it does not know instead of
# refusing them: the journal's records, which the agent of the other slot (older or newer) reads too.
IGNORES_UNKNOWN_KEYS = "ignores_unknown_keys"


def kinds_of(members: tuple[Any, ...]) -> dict[str, type[Any]] | None:
    """``{kind: dataclass}`` when ``members`` are dataclasses told apart by their ``kind`` default."""
    out: dict[str, type[Any]] = {}
    for tp in members:
        if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
            return None
        kind = next((f.default for f in dataclasses.fields(tp) if f.name == KIND), None)
        if not isinstance(kind, str) or kind in out:
            return None
        out[kind] = tp
    return out or None


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass
class Source:
    """Where each key of a parsed document came from: file name and 1-based line per key path."""

    file: str
    lines: dict[KeyPath, tuple[str, int]] = field(default_factory=dict)

    def locate(self, path: KeyPath) -> tuple[str, int | None]:
        for n in range(len(path), -1, -1):
            hit = self.lines.get(path[:n])
            if hit is not None:
                return hit
        return self.file, None

    def error(self, path: KeyPath, message: str) -> ModelError:
        file, line = self.locate(path)
        return ModelError(file, line, dotted(path), message)


# --- YAML as hostile input ----------------------------------------------------------------------
#
# Configuration files are read as untrusted text: an administrator's typo, a corrupted disk or an
# attacker's file must give one ModelError line, never a hang, a traceback or gigabytes of memory. So
# only a subset of YAML is accepted, checked while the parser streams events (before anything is built):
#
# - one document of mappings, lists and scalars; keys are plain scalars;
# - no anchors, aliases or merge keys (``&a``, ``*a``, ``<<``): a few hundred bytes of nested aliases
#   expand to billions of nodes, and configuration has no need to repeat itself;
# - no tags beyond the core schema (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``, ``!!seq``,
#   ``!!map``), and a tagged value must be valid for its tag (``!!bool maybe`` is an error);
# - plain scalars resolve as PyYAML's safe loader resolves them (YAML 1.1: ``yes`` is true), except that
#   dates stay text;
# - bounded size, nesting, number of values, scalar length and number length (the limits below).
#
# PyYAML's own composer recurses once per nesting level and expands aliases; the events it is built on
# are produced by a parser with explicit stacks, so the tree is assembled here from events, iteratively.

MAX_BYTES = 256 * 1024
"""Largest file read (bytes); the lock and the policies are a few kilobytes."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists; the models are at most six levels deep."""
MAX_NODES = 10_000
"""Most values (scalars, mappings, lists, keys included) in one document."""
MAX_SCALAR = 4096
"""Longest key or value, in characters."""
MAX_NUMBER = 40
"""Longest number, in characters (Python refuses to convert integers of more than 4300 digits)."""


def parse_yaml(text: str, file: str) -> tuple[Any, Source]:
    """Parse one YAML document of the allowed subset into plain data plus the line of every key and
    list item. Anything else is a :class:`ModelError` naming the file and line."""
    # Imported here, not at the top: ``piccolod --help`` must work where PyYAML is missing.
    from piccolod.yaml_subset import parse_events

    src = Source(file)
    if len(text) > MAX_BYTES:
        raise ModelError(file, None, "", f"larger than {MAX_BYTES // 1024} KiB")
    return parse_events(text, src), src


def read_bounded(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), at most ``limit`` of them.

    Never blocks on a FIFO or a device (it is refused: "not a regular file"). Raises
    :class:`ModelError` naming the file (:class:`MissingFile` when it does not exist).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise MissingFile(str(path), None, "", f"cannot read: {exc.strerror}") from None
    except OSError as exc:
        raise ModelError(str(path), None, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelError(str(path), None, "", "cannot read: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ModelError(str(path), None, "", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise ModelError(str(path), None, "", f"larger than {limit // 1024} KiB")
    return b"".join(chunks)


def decode_utf8(data: bytes, file: str) -> str:
    """``data`` as UTF-8 text, or a :class:`ModelError` naming the first bad line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(file, data.count(b"\n", 0, exc.start) + 1, "", "not UTF-8 text") from None


def load_file(path: Path) -> tuple[Any, Source]:
    """Read (bounded) and parse a YAML file; an unreadable file is a :class:`ModelError` too."""
    return parse_yaml(decode_utf8(read_bounded(path), str(path)), str(path))


def merge(base: Any, over: Any, base_src: Source, over_src: Source) -> Any:
    """Merge ``over`` onto ``base`` key by key (mappings recurse; anything else replaces); every key
    and item of ``over`` is blamed on ``over_src`` from then on."""
    both = isinstance(base, dict) and isinstance(over, dict)
    base_src.lines.update((p, where) for p, where in over_src.lines.items() if p or not both)
    return _merged(base, over)


def _merged(base: Any, over: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(base[key], value) if key in base else value
    return out


def set_path(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    """Set ``value`` at ``path`` in nested dicts, creating mappings on the way."""
    cur = data
    for part in path[:-1]:
        nxt = cur.get(str(part))
        if not isinstance(nxt, dict):
            nxt = {}
            cur[str(part)] = nxt
        cur = nxt
    cur[str(path[-1])] = value


# --- building dataclasses ------------------------------------------------------------------------


def build(cls: type[T], data: Any, src: Source, path: KeyPath = ()) -> T:
    """Turn plain data into the frozen dataclass ``cls``, or raise :class:`ModelError`."""
    return typing.cast(T, _convert(cls, data, src, path))


def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(tp: Any, value: Any, src: Source, path: KeyPath) -> Any:  # noqa: PLR0911, PLR0912
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, value, src, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, src, path)
        kinds = kinds_of(tuple(inner))
        if kinds is not None:
            return _convert_kind(kinds, value, src, path)
        errors = []
        for arg in inner:
            try:
                return _convert(arg, value, src, path)
            except ModelError as exc:
                errors.append(exc.message)
        raise src.error(path, " or ".join(errors))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise src.error(path, f"expected a list, got {_kind(value)}")
        items = tuple(_convert(args[0], v, src, (*path, i)) for i, v in enumerate(value))
        return items
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise src.error(path, f"expected a mapping, got {_kind(value)}")
        return {
            _convert(key_tp, k, src, (*path, k)): _convert(val_tp, v, src, (*path, k))
            for k, v in value.items()
        }
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            raise src.error(path, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return tp(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise src.error(path, f"expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise src.error(path, f"expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise src.error(path, f"expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise src.error(path, f"expected a string, got {_kind(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported type in model: {tp!r}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _convert_kind(kinds: Mapping[str, type[Any]], value: Any, src: Source, path: KeyPath) -> Any:
    """One member of a union told apart by ``kind``: the one the value's ``kind`` names."""
    names = ", ".join(kinds)
    if not isinstance(value, dict):
        raise src.error(path, f"expected a mapping with a kind ({names}), got {_kind(value)}")
    if KIND not in value:
        raise src.error(path, f"needs a kind: one of {names}")
    kind = value[KIND]
    if not isinstance(kind, str) or kind not in kinds:
        raise src.error((*path, KIND), f"must be one of {names}; got {kind!r}")
    return _convert_dataclass(kinds[kind], value, src, path)


def _convert_dataclass(cls: type[Any], value: Any, src: Source, path: KeyPath) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise src.error(path, f"expected a mapping, got {_kind(value)}")
    extra = extra_field(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f is not extra}
    unknown = next((key for key in value if key not in fields), None) if extra is None else None
    if unknown is not None and getattr(cls, IGNORES_UNKNOWN_KEYS, False):
        unknown = None  # a record a newer agent wrote: what this one does not know, it leaves alone
    if unknown is not None:
        raise src.error((*path, unknown), f"unknown key (expected one of: {', '.join(fields)})")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    if extra is not None:
        kwargs[extra.name] = _convert_extra(hints[extra.name], value, fields, src, path)
    for name, f in fields.items():
        sub = (*path, name)
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise src.error(sub, "required key is missing")
            continue
        converted = _convert(hints[name], value[name], src, sub)
        check = f.metadata.get("check")
        if check is not None:
            try:
                converted = check(converted)
            except (ValueError, ArithmeticError) as exc:
                raise src.error(sub, str(exc)) from None
        kwargs[name] = converted
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            validate()
    except FieldError as exc:
        raise src.error((*path, *exc.path), str(exc)) from None
    return obj


def _convert_extra(
    tp: Any, value: dict[str, Any], fields: Mapping[str, Any], src: Source, path: KeyPath
) -> dict[str, Any]:
    """The keys of the user's own (those that are not ``fields``), each converted to the field's type."""
    item_tp = typing.get_args(tp)[1]
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in fields:
            continue
        try:
            out[key] = _convert(item_tp, item, src, (*path, key))
        except ModelError as exc:
            if exc.key != dotted((*path, key)):
                raise
            # The entry itself is wrong (no kind, say): it may be a misspelt key of the known ones.
            raise src.error((*path, key), f"{exc.message} (or a misspelt key: {', '.join(fields)})") from None
    return out


def default(cls: type[T]) -> T:
    """The model with every default (what an empty file gives)."""
    return build(cls, {}, Source("<defaults>"))


# --- deriving other views from the same dataclasses ----------------------------------------------


def leaves(cls: type[Any], path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any, dataclasses.Field[Any]]]:
    """Every scalar-or-list key of the model: (path, type, field). Drives env overrides and docs."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("extra"):
            continue  # keys of the user's own are not fixed keys
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaves(typing.cast(type[Any], tp), (*path, f.name))
        else:
            yield (*path, f.name), tp, f


def to_plain(obj: Any, *, omit_defaults: bool = False) -> Any:
    """A dataclass tree as plain YAML/JSON-able data (enums as values, tuples as lists); the keys of the
    user's own sit beside the fields, as in the file. ``omit_defaults`` leaves out the fields marked
    ``omit_default`` while they hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("extra"):
                out.update(to_plain(value, omit_defaults=omit_defaults))
            elif not (omit_defaults and f.metadata.get("omit_default") and value == _default_of(f)):
                out[f.name] = to_plain(value, omit_defaults=omit_defaults)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_plain(v, omit_defaults=omit_defaults) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v, omit_defaults=omit_defaults) for k, v in obj.items()}
    return obj


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def json_schema(cls: type[Any], title: str | None = None) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the model: types, enums, defaults, help texts, no extra keys."""
    schema = _schema_for(cls, None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    if title:
        schema["title"] = title
    return schema


def _union_schema(args: tuple[Any, ...]) -> dict[str, Any]:
    kinds = kinds_of(tuple(a for a in args if a is not type(None)))
    if kinds is None:
        return {"anyOf": [_schema_for(a, None) for a in args]}
    members = []
    for kind, member in kinds.items():
        one = _schema_for(member, None)
        one["properties"][KIND] = {"const": kind}
        one["required"] = [KIND]
        members.append(one)
    return {"oneOf": members}


def _schema_for(tp: Any, f: dataclasses.Field[Any] | None) -> dict[str, Any]:  # noqa: PLR0911
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        props = {}
        extra = extra_field(tp)
        for sub in dataclasses.fields(tp):
            if sub is extra:
                continue
            prop = _schema_for(hints[sub.name], sub)
            if sub.metadata.get("help"):
                prop["description"] = sub.metadata["help"]
            if sub.default is not dataclasses.MISSING:
                prop["default"] = to_plain(sub.default)
            elif sub.default_factory is not dataclasses.MISSING:
                prop["default"] = to_plain(sub.default_factory())
            props[sub.name] = prop
        more: Any = False if extra is None else _schema_for(typing.get_args(hints[extra.name])[1], None)
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": more}
        if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "("):
            out["description"] = " ".join(tp.__doc__.split())
        return out
    if origin in (typing.Union, types.UnionType):
        return _union_schema(typing.get_args(tp))
    if origin is tuple:
        return {"type": "array", "items": _schema_for(typing.get_args(tp)[0], None)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_for(typing.get_args(tp)[1], None)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    return {}
