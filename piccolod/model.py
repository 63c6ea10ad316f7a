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
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import yaml

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
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key or '<top>'}: {self.message}" if self.key else f"{where}: {self.message}"


class FieldError(ValueError):
    """Raised by a model's ``validate()`` to blame one key (path relative to that model)."""

    def __init__(self, path: KeyPath | str, message: str) -> None:
        self.path: KeyPath = tuple(path.split(".")) if isinstance(path, str) else path
        super().__init__(message)


def meta(help: str, *, check: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Field metadata: a help text for the schema and ``--help``, and an optional value check."""
    return {"help": help, "check": check}


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


# --- YAML with positions -------------------------------------------------------------------------


def parse_yaml(text: str, file: str) -> tuple[Any, Source]:
    """Parse one YAML document into plain data plus the line of every key and list item."""
    import yaml  # here, not at the top: ``piccolod --help`` must work where PyYAML is missing

    src = Source(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ModelError(file, line, "", f"malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ModelError(file, None, "", f"malformed YAML: {exc}") from None
    if node is None:
        return {}, src
    return _plain(node, (), src), src


def _plain(node: yaml.Node, path: KeyPath, src: Source) -> Any:
    import yaml

    src.lines.setdefault(path, (src.file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                raise src.error(path, "only plain keys are supported (no merge keys or complex keys)")
            key = str(key_node.value)
            sub = (*path, key)
            if key in out:
                raise ModelError(src.file, key_node.start_mark.line + 1, dotted(sub), "duplicate key")
            src.lines[sub] = (src.file, key_node.start_mark.line + 1)
            out[key] = _plain(value_node, sub, src)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, i), src) for i, item in enumerate(node.value)]
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise src.error(path, f"bad value: {exc}") from None


def load_file(path: Path) -> tuple[Any, Source]:
    """Read and parse a YAML file; an unreadable file is a :class:`ModelError` too."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(str(path), None, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ModelError(str(path), None, "", "not UTF-8 text") from None
    return parse_yaml(text, str(path))


def merge(base: Any, over: Any, base_src: Source, over_src: Source, path: KeyPath = ()) -> Any:
    """Merge ``over`` onto ``base`` key by key (mappings recurse; anything else replaces)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            sub = (*path, key)
            out[key] = merge(base.get(key), value, base_src, over_src, sub) if key in base else value
            for p, where in over_src.lines.items():
                if p[: len(sub)] == sub:
                    base_src.lines[p] = where
        return out
    for p, where in over_src.lines.items():
        if p[: len(path)] == path:
            base_src.lines[p] = where
    return over


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


def _convert_dataclass(cls: type[Any], value: Any, src: Source, path: KeyPath) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise src.error(path, f"expected a mapping, got {_kind(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key not in fields:
            raise src.error((*path, key), f"unknown key (expected one of: {', '.join(fields)})")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
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
            except ValueError as exc:
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


def default(cls: type[T]) -> T:
    """The model with every default (what an empty file gives)."""
    return build(cls, {}, Source("<defaults>"))


# --- deriving other views from the same dataclasses ----------------------------------------------


def leaves(cls: type[Any], path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any, dataclasses.Field[Any]]]:
    """Every scalar-or-list key of the model: (path, type, field). Drives env overrides and docs."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaves(typing.cast(type[Any], tp), (*path, f.name))
        else:
            yield (*path, f.name), tp, f


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-able data (enums as values, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def json_schema(cls: type[Any], title: str | None = None) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the model: types, enums, defaults, help texts, no extra keys."""
    schema = _schema_for(cls, None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    if title:
        schema["title"] = title
    return schema


def _schema_for(tp: Any, f: dataclasses.Field[Any] | None) -> dict[str, Any]:  # noqa: PLR0911
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        props = {}
        for sub in dataclasses.fields(tp):
            prop = _schema_for(hints[sub.name], sub)
            if sub.metadata.get("help"):
                prop["description"] = sub.metadata["help"]
            if sub.default is not dataclasses.MISSING:
                prop["default"] = to_plain(sub.default)
            elif sub.default_factory is not dataclasses.MISSING:
                prop["default"] = to_plain(sub.default_factory())
            props[sub.name] = prop
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "("):
            out["description"] = " ".join(tp.__doc__.split())
        return out
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        return {"anyOf": [_schema_for(a, None) for a in args]}
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
