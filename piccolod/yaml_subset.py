"""The YAML subset configurations may use, parsed from PyYAML's events without recursion.

:func:`piccolod.model.parse_yaml` is the entry point; this module holds the part that needs PyYAML, so
that importing the model (and ``piccolod --help``) works where PyYAML is missing. Refused: anchors,
aliases, merge keys, tags outside the core schema, more than one document; bounded: nesting depth,
number of values, key, value and number lengths (the limits live in :mod:`piccolod.model`).
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from piccolod.model import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_NUMBER,
    MAX_SCALAR,
    KeyPath,
    ModelError,
    Source,
    dotted,
)

_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _BOOL, _INT, _FLOAT = (_TAG + t for t in ("str", "null", "bool", "int", "float"))
_SEQ, _MAP, _MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"
_AS_TEXT = frozenset({_TAG + "timestamp", _TAG + "value"})
_CORE_SCALARS = frozenset({_STR, _NULL, _BOOL, _INT, _FLOAT})
_TAGS_ALLOWED = "only !!str, !!int, !!float, !!bool, !!null, !!seq and !!map"
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_CONSTRUCT = {
    _NULL: _CONSTRUCTOR.construct_yaml_null,
    _BOOL: _CONSTRUCTOR.construct_yaml_bool,
    _INT: _CONSTRUCTOR.construct_yaml_int,
    _FLOAT: _CONSTRUCTOR.construct_yaml_float,
}
# libyaml's parser when PyYAML was built with it (about 20 times faster); the pure-Python one otherwise.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _implied(value: str) -> str:
    """The tag a plain scalar resolves to (PyYAML's safe resolver)."""
    tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    return typing.cast(str, tag)


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark else None


class _Frame:
    """One open mapping or list while events stream in."""

    __slots__ = ("key", "path", "value")

    def __init__(self, value: dict[str, Any] | list[Any], path: KeyPath) -> None:
        self.value = value
        self.path = path
        self.key: str | None = None  # in a mapping: the key whose value comes next


class _Builder:
    """Plain data from parser events, within the limits, with the line of every key and item."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.stack: list[_Frame] = []
        self.result: Any = {}
        self.documents = 0
        self.nodes = 0

    def fail(self, event: yaml.Event, path: KeyPath, message: str) -> ModelError:
        return ModelError(self.src.file, _line(event), dotted(path), message)

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            if self.documents:
                raise self.fail(event, (), "more than one YAML document (a second '---')")
            self.documents += 1
            self.result = None
        elif isinstance(event, yaml.CollectionEndEvent):
            self.stack.pop()
        elif isinstance(event, yaml.NodeEvent):
            self.node(event)

    def node(self, event: yaml.NodeEvent) -> None:
        frame = self.stack[-1] if self.stack else None
        if isinstance(frame, _Frame) and isinstance(frame.value, dict) and frame.key is None:
            self.key(frame, event)
            return
        if frame is None:
            path: KeyPath = ()
        elif isinstance(frame.value, dict):
            path = (*frame.path, typing.cast(str, frame.key))
        else:
            path = (*frame.path, len(frame.value))
        self.check(event, path)
        self.src.lines.setdefault(path, (self.src.file, _line(event) or 0))
        value: Any
        if isinstance(event, yaml.ScalarEvent):
            value = self.scalar(event, path)
        else:
            if len(self.stack) >= MAX_DEPTH:
                raise self.fail(event, path, f"nested deeper than {MAX_DEPTH} levels")
            is_map = isinstance(event, yaml.MappingStartEvent)
            tag = typing.cast(yaml.CollectionStartEvent, event).tag
            if tag not in (None, "!", _MAP if is_map else _SEQ):
                raise self.fail(event, path, f"tag {tag} is not allowed ({_TAGS_ALLOWED})")
            value = {} if is_map else []
        if frame is None:
            self.result = value
        elif isinstance(frame.value, dict):
            frame.value[typing.cast(str, frame.key)] = value
            frame.key = None
        else:
            frame.value.append(value)
        if not isinstance(event, yaml.ScalarEvent):
            self.stack.append(_Frame(value, path))

    def check(self, event: yaml.NodeEvent, path: KeyPath) -> None:
        if isinstance(event, yaml.AliasEvent):
            raise self.fail(event, path, f"aliases (*{event.anchor}) are not allowed: write the value out")
        if event.anchor is not None:
            raise self.fail(event, path, f"anchors (&{event.anchor}) are not allowed")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(event, path, f"more than {MAX_NODES} values in one file")

    def key(self, frame: _Frame, event: yaml.NodeEvent) -> None:
        self.check(event, frame.path)
        if not isinstance(event, yaml.ScalarEvent):
            raise self.fail(event, frame.path, "keys must be plain text (no lists or mappings as keys)")
        key = event.value
        if len(key) > MAX_SCALAR:
            raise self.fail(event, frame.path, f"a key longer than {MAX_SCALAR} characters")
        sub = (*frame.path, key)
        plain = event.tag is None and event.implicit[0]
        if plain and _implied(key) == _MERGE:
            raise self.fail(event, frame.path, "merge keys (<<) are not allowed: write the keys out")
        assert isinstance(frame.value, dict)
        if key in frame.value:
            raise self.fail(event, sub, "duplicate key")
        self.src.lines[sub] = (self.src.file, _line(event) or 0)
        frame.key = key

    def scalar(self, event: yaml.ScalarEvent, path: KeyPath) -> Any:
        value = event.value
        if len(value) > MAX_SCALAR:
            raise self.fail(event, path, f"a value longer than {MAX_SCALAR} characters")
        implied = _implied(value)
        if event.tag is None:
            tag = implied if event.implicit[0] else _STR
        elif event.tag == "!":
            tag = _STR
        elif event.tag in _CORE_SCALARS:
            tag = event.tag
            if tag != _STR and not (implied == tag or (tag == _FLOAT and implied == _INT)):
                raise self.fail(event, path, f"{value!r} is not a valid !!{tag.removeprefix(_TAG)}")
        else:
            raise self.fail(event, path, f"tag {event.tag} is not allowed ({_TAGS_ALLOWED})")
        if tag == _MERGE:
            raise self.fail(event, path, "merge keys (<<) are not allowed")
        if tag == _STR or tag in _AS_TEXT:
            return value
        if tag in (_INT, _FLOAT) and len(value) > MAX_NUMBER:
            raise self.fail(event, path, f"a number longer than {MAX_NUMBER} characters")
        try:
            return _CONSTRUCT[tag](yaml.ScalarNode(tag, value))
        except (yaml.YAMLError, ValueError, KeyError, ArithmeticError) as exc:
            raise self.fail(event, path, f"bad value {value!r}: {exc}") from None


def parse_events(text: str, src: Source) -> Any:
    """Parse one YAML document of the allowed subset into plain data plus the line of every key and
    list item. Anything else is a :class:`ModelError` naming the file and line."""
    file = src.file
    builder = _Builder(src)
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            builder.feed(event)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ModelError(file, line, "", f"malformed YAML: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ModelError(file, line, "", f"character U+{exc.character:04X} is not allowed in YAML") from None
    except yaml.YAMLError as exc:
        raise ModelError(file, None, "", f"malformed YAML: {exc}") from None
    return builder.result
