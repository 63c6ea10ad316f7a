"""Checks in drop-in directories beside a policy file: ``checks.d/`` and greenboot's ``required.d/`` and
``wanted.d/``.

A *layer* is a policy file and the directory it lives in: the vendor's ``/usr/lib/piccolod``, then the
administrator's ``/etc/piccolod`` (``--config FILE`` is one layer: FILE and its directory). In that
directory:

- ``checks.d/NAME.yaml`` declares one check named NAME, written as ``health_policy.checks.NAME`` would be
  (``{kind: http, url: ...}``). It is declared only: the startup lists name it to run it.
- ``required.d/NAME`` and ``wanted.d/NAME``: every entry is an ``exec`` check named NAME that runs that
  file, with no arguments; a ``required.d`` one is required, a ``wanted.d`` one optional, unless the
  startup lists name it themselves (then they decide). That is greenboot's layout, so scripts move over
  unchanged. An entry that cannot run (not executable, not a regular file) is still a check: refused,
  and shown as such (``piccolod check`` refuses the policy).

Layers apply in order. A policy file merges key by key onto what the layers before it made (mappings
merge, lists and values replace); a drop-in replaces the whole check of its name, so a file in
``/etc/piccolod/checks.d`` overrides the vendor's check of the same name. Within one layer a name is
defined once: the policy file and a drop-in, or two directories, defining the same name is an error.
Names starting with a dot are not read (editors and package managers leave such files); ``checks.d``
reads only ``*.yaml``. Every directory is read with bounds (:data:`MAX_ENTRIES` entries, each file
through the same bounded YAML reader as the policy), and every problem is a one-line
:class:`~piccolod.model.ModelError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piccolod.checkspec import BUILT_IN, Component, Kind, check_name
from piccolod.model import KeyPath, MissingFile, ModelError, Source, load_file

CHECKS_DIR = "checks.d"
REQUIRED_DIR = "required.d"
WANTED_DIR = "wanted.d"
SUFFIX = ".yaml"
MAX_ENTRIES = 256
CHECKS: KeyPath = ("health_policy", "checks")


@dataclass
class Layer:
    """One layer as plain data: its policy file's, with the drop-ins' checks in ``health_policy.checks``."""

    data: Any
    src: Source
    dropins: set[str] = field(default_factory=set)  # names a drop-in of this layer defines (they replace)
    weights: dict[str, bool] = field(default_factory=dict)  # greenboot entries: name -> required


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    """The visible entries of ``directory`` by name ([] when it does not exist)."""
    try:
        scan = os.scandir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ModelError(
            str(directory), None, "", f"cannot read the directory: {exc.strerror or exc}"
        ) from None
    found: list[os.DirEntry[str]] = []
    with scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue
            found.append(entry)
            if len(found) > MAX_ENTRIES:
                raise ModelError(str(directory), None, "", f"more than {MAX_ENTRIES} entries")
    return sorted(found, key=lambda e: e.name)


def _name(path: Path, name: str) -> str:
    try:
        checked = check_name(name)
    except ValueError as exc:
        raise ModelError(str(path), None, "", f"cannot name a check: {exc}") from None
    if isinstance(checked, Component):
        raise ModelError(
            str(path), None, "", f"{name!r} is a built-in check: set it under health_policy.checks.{name}"
        )
    return checked


def _checks_of(data: Any) -> dict[str, Any] | None:
    """``health_policy.checks`` of plain policy data, if it is a mapping."""
    hp = data.get("health_policy") if isinstance(data, dict) else None
    checks = hp.get("checks") if isinstance(hp, dict) else None
    return checks if isinstance(checks, dict) else None


class _Definitions:
    """Where each name of one layer is defined, to refuse a second definition."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def add(self, name: str, where: str) -> None:
        earlier = self.where.get(name)
        if earlier is not None:
            raise ModelError(
                where,
                None,
                ".".join((*map(str, CHECKS), name)),
                f"already defined in {earlier}: a name is defined once per layer (a file in /etc/piccolod "
                "replaces the vendor's of the same name)",
            )
        self.where[name] = where


def _dropins(directory: Path, defined: _Definitions, src: Source) -> tuple[dict[str, Any], dict[str, bool]]:
    """The checks of ``directory``'s drop-ins as plain data, and the greenboot entries' weights."""
    checks: dict[str, Any] = {}
    weights: dict[str, bool] = {}
    for entry in _entries(directory / CHECKS_DIR):
        if not entry.name.endswith(SUFFIX):
            continue
        path = Path(entry.path)
        name = _name(path, entry.name.removesuffix(SUFFIX))
        defined.add(name, str(path))
        one, one_src = load_file(path)
        checks[name] = one
        src.lines.update({(*CHECKS, name, *key): where for key, where in one_src.lines.items()})
    for sub, required in ((REQUIRED_DIR, True), (WANTED_DIR, False)):
        for entry in _entries(directory / sub):
            path = Path(entry.path)
            name = _name(path, entry.name)
            defined.add(name, str(path))
            checks[name] = {"kind": Kind.EXEC.value, "command": [str(path)]}
            weights[name] = required
            for key in ((), ("kind",), ("command",), ("command", 0)):
                src.lines[(*CHECKS, name, *key)] = (str(path), 0)
    return checks, weights


def read_layer(policy: Path, directory: Path | None, *, must_exist: bool = False) -> Layer:
    """The layer of ``policy`` and of the drop-ins in ``directory`` (None: none); a missing policy file
    is an empty one unless it ``must_exist``."""
    try:
        data, src = load_file(policy)
    except MissingFile:
        if must_exist:
            raise
        data, src = {}, Source(str(policy))
    layer = Layer(data, src)
    if directory is None or not isinstance(data, dict):  # not a mapping: the model says so
        return layer
    defined = _Definitions()
    for name in _checks_of(data) or {}:
        if name not in BUILT_IN:
            defined.add(name, f"{policy}:{src.locate((*CHECKS, name))[1] or '?'}")
    checks, layer.weights = _dropins(directory, defined, src)
    if checks:
        hp = data.setdefault("health_policy", {})
        target = hp.setdefault("checks", {}) if isinstance(hp, dict) else None
        if isinstance(target, dict):
            target.update(checks)
        layer.dropins = set(checks)
    return layer


def replace_dropins(data: Any, layer: Layer) -> None:
    """Before ``layer`` merges onto ``data``: drop the checks its drop-ins replace as a whole."""
    checks = _checks_of(data)
    for name in layer.dropins:
        if checks is not None:
            checks.pop(name, None)


def name_greenboot_checks(
    data: Any, src: Source, weights: dict[str, bool], defaults: dict[str, tuple[str, ...]]
) -> None:
    """Name the greenboot entries in the startup lists (``required.d``: required) unless the lists name
    them already. ``defaults`` are the lists' built-in defaults, for a policy that leaves them out."""
    hp = data.setdefault("health_policy", {}) if isinstance(data, dict) and weights else None
    startup = hp.setdefault("startup", {}) if isinstance(hp, dict) else None
    if not isinstance(startup, dict):
        return  # nothing to name, or not a mapping (the model says so)
    lists: dict[str, list[Any]] = {}
    for key, default in defaults.items():
        value = startup.setdefault(key, [str(v) for v in default])
        if not isinstance(value, list):
            return
        lists[key] = value
    listed = {name for value in lists.values() for name in value if isinstance(name, str)}
    for name, required in weights.items():
        if name in listed:
            continue
        key = "required_components" if required else "optional_components"
        file, line = src.locate((*CHECKS, name, "command", 0))
        src.lines[("health_policy", "startup", key, len(lists[key]))] = (file, line or 0)
        lists[key].append(name)
