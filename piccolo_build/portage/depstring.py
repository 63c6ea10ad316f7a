"""The atoms a dependency string (PMS 8.2) pulls in, for one configuration of USE flags.

``flag? ( ... )`` counts when ``enabled(flag)`` says so (``!flag? ( ... )`` when it does not), ``|| (
a b )`` by its first alternative (what portage prefers when nothing else is installed), plain ``( ... )``
whole. The eclass helpers that wrap atoms, ``$(python_gen_cond_dep '...' ...)`` and its relatives,
count as plain groups: their atoms apply to the Python implementations the ebuild is built for.
Blockers and words_ that are not atoms (``${PYTHON_DEPS}``, ``python*``) are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from piccolo_build.gentoo import Atom, parse_atom

_TOKEN = re.compile(r"\$\([\w-]+|[()]|[^\s()]+")
_CONDITION = re.compile(r"(?P<negated>!?)(?P<flag>[A-Za-z0-9][A-Za-z0-9+_@-]*)\?")


@dataclass
class _Group:
    active: bool
    any_of: bool = False
    taken: bool = False

    @property
    def open_for_child(self) -> bool:
        return self.active and not (self.any_of and self.taken)


def atoms(depstring: str, enabled: Callable[[str], bool]) -> list[Atom]:
    """The atoms of ``depstring`` that apply when the USE flags are as ``enabled`` says."""
    out: list[Atom] = []
    stack = [_Group(active=True)]
    pending: _Group | None = None
    for word in _TOKEN.findall(depstring.replace("'", " ").replace('"', " ")):
        top = stack[-1]
        if word == "||":
            pending = _Group(active=top.open_for_child, any_of=True)
        elif (m := _CONDITION.fullmatch(word)) is not None:
            wanted = enabled(m["flag"]) != bool(m["negated"])
            pending = _Group(active=top.open_for_child and wanted)
        elif word == "(" or word.startswith("$("):
            stack.append(pending or _Group(active=top.open_for_child))
            pending = None
        elif word == ")":
            if len(stack) > 1:
                child = stack.pop()
                if child.active and stack[-1].any_of:
                    stack[-1].taken = True
        else:
            pending = None
            try:
                atom = parse_atom(word)
            except ValueError:
                continue
            if not atom.blocker and top.open_for_child:
                out.append(atom)
                if top.any_of:
                    top.taken = True
    return out
