"""``http``: ``GET url`` answers ``status`` (200 by default), and optionally a JSON field has a value.

Plain HTTP over TCP with the agent's own small client (:mod:`piccolod.http_client`): one request on a
fresh connection, ``Connection: close``, redirects not followed (a 301 is not a 200), the answer's body
read up to :data:`MAX_BODY` bytes. The whole exchange, name resolution included, ends by the check's
deadline. ``https://`` is refused when the policy is read: the agent carries no TLS stack (about 6 MiB
for its whole life); a health endpoint on the device itself is plain HTTP, and anything else is an
``exec`` check away.

``json: {field: a.b, equals: value}``: the answer must be JSON, and following ``a`` then ``b`` (a list
index is a number: ``items.0.state``) must reach a value equal to ``value``: strings to strings, numbers
to numbers (1 equals 1.0), booleans to booleans, null to null.
"""

from __future__ import annotations

from functools import partial
from typing import Any
from urllib.parse import urlsplit

from piccolod import http_client
from piccolod.checks.bounded import race
from piccolod.checks.network import reason
from piccolod.checkspec import HttpCheck, JsonMatch
from piccolod.policy import PolicyFile
from piccolod.result import Outcome
from piccolod.text import one_line

MAX_BODY = 1024 * 1024
_MISSING = object()


def _field(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(part, _MISSING)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
        if doc is _MISSING:
            return _MISSING
    return doc


def same(found: Any, wanted: Any) -> bool:
    """JSON equality: null only to null, booleans only to booleans (not Python's ``True == 1``), numbers
    to numbers (1 equals 1.0), strings to strings."""
    if found is None or wanted is None or isinstance(found, bool) or isinstance(wanted, bool):
        return found is wanted
    if isinstance(found, int | float) and isinstance(wanted, int | float):
        return found == wanted
    return isinstance(found, str) and isinstance(wanted, str) and found == wanted


def _json_problem(answer: http_client.Answer, match: JsonMatch, details: dict[str, Any]) -> str | None:
    try:
        doc = answer.json()
    except http_client.HttpError:
        return "the answer is not JSON"
    found = _field(doc, match.field)
    if found is _MISSING:
        return f"the answer has no field {match.field}"
    details["json_value"] = (
        found if isinstance(found, str | int | float | bool) or found is None else "(not a scalar)"
    )
    if not same(found, match.equals):
        return f"{match.field} is {one_line(repr(found), 80)}, not {match.equals!r}"
    return None


def check_http(name: str, spec: HttpCheck, policy: PolicyFile, timeout: float) -> Outcome:
    parts = urlsplit(spec.url)
    host = parts.hostname or ""
    ep = http_client.Endpoint(spec.url, host=host, port=parts.port or 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    details: dict[str, Any] = {"url": spec.url, "status_code": None, "expected_status": spec.status}
    got = race({"get": partial(http_client.get, ep, path, timeout, max_body=MAX_BODY)}, timeout)["get"]
    if isinstance(got, BaseException):
        why = one_line(str(got)) if isinstance(got, http_client.HttpError) else reason(got, timeout)
        return Outcome(False, f"GET {spec.url} failed: {why}", details)
    assert isinstance(got, http_client.Answer)
    details["status_code"] = got.status
    if got.status != spec.status:
        return Outcome(False, f"GET {spec.url} answered HTTP {got.status}, not {spec.status}", details)
    if spec.json is not None:
        problem = _json_problem(got, spec.json, details)
        if problem is not None:
            return Outcome(False, f"GET {spec.url} answered HTTP {got.status}, but {problem}", details)
    return Outcome(True, f"GET {spec.url} answered HTTP {got.status}", details)
