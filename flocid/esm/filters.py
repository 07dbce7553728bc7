"""Event filtering for event source mappings: AWS's filter-pattern grammar, sans-IO.

A mapping's ``FilterCriteria`` is ``{"Filters": [{"Pattern": "<json>"}, ...]}``; a record passes
when any filter matches (no filters: everything passes). A pattern is a JSON object whose keys
name fields of the record; a value is either a nested pattern object or a non-empty array of
matchers, any of which may match:

    "x"  1  null  true            exact (strings and numbers compare by value)
    {"prefix": "ab"}              string starts with
    {"suffix": "yz"}              string ends with
    {"equals-ignore-case": "Ab"}  case-insensitive string equality
    {"anything-but": v | [v...] | {"prefix": p} | {"suffix": s}}
    {"numeric": [">", 0, "<=", 5]} numeric range (operators = < <= > >=)
    {"exists": true | false}      presence of the field (leaf fields)
    "$or": [pattern, pattern...]  any of the sub-patterns

An event field that is an array matches when any element matches. Nothing here does I/O;
``parse_criteria`` raises ``InvalidParameterValue("Invalid filter pattern definition.")`` exactly as
Lambda does for a bad pattern (peers.md 1.10 item 38).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from flocid.lambda_.errors import InvalidParameterValue

INVALID = "Invalid filter pattern definition."

_MISSING = object()
_OPS = {"=", "<", "<=", ">", ">="}
Pattern = dict[str, Any]


def _bad() -> InvalidParameterValue:
    return InvalidParameterValue(INVALID)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_matcher(m: Any) -> None:
    if m is None or isinstance(m, str | bool) or _is_num(m):
        return
    if not isinstance(m, dict) or len(m) != 1:
        raise _bad()
    (kind, arg), = m.items()
    if kind in ("prefix", "suffix", "equals-ignore-case"):
        if not isinstance(arg, str):
            raise _bad()
    elif kind == "exists":
        if not isinstance(arg, bool):
            raise _bad()
    elif kind == "anything-but":
        if isinstance(arg, dict):
            if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix") or not isinstance(
                    next(iter(arg.values())), str):
                raise _bad()
        elif isinstance(arg, list):
            if not arg or not all(isinstance(x, str) or _is_num(x) for x in arg):
                raise _bad()
        elif not (isinstance(arg, str) or _is_num(arg)):
            raise _bad()
    elif kind == "numeric":
        if not isinstance(arg, list) or not arg or len(arg) % 2 or len(arg) > 4:
            raise _bad()
        for op, val in zip(arg[::2], arg[1::2], strict=True):
            if op not in _OPS or not _is_num(val):
                raise _bad()
        if len(arg) == 4 and "=" in (arg[0], arg[2]):
            raise _bad()
    else:
        raise _bad()


def check_pattern(p: Any) -> None:
    """Raise ``InvalidParameterValue`` unless ``p`` (parsed JSON) is a valid pattern object."""
    if not isinstance(p, dict) or not p:
        raise _bad()
    for key, val in p.items():
        if key == "$or":
            if not isinstance(val, list) or len(val) < 2:
                raise _bad()
            for sub in val:
                check_pattern(sub)
        elif isinstance(val, dict):
            check_pattern(val)
        elif isinstance(val, list):
            if not val:
                raise _bad()
            for m in val:
                _check_matcher(m)
        else:
            raise _bad()


def parse_criteria(criteria: Any) -> list[Pattern]:
    """Validate a ``FilterCriteria`` body and return its parsed patterns."""
    if criteria is None:
        return []
    if not isinstance(criteria, dict):
        raise _bad()
    filters = criteria.get("Filters", [])
    if not isinstance(filters, list) or len(filters) > 5:
        raise _bad()
    out: list[Pattern] = []
    for f in filters:
        if not isinstance(f, dict) or not isinstance(f.get("Pattern"), str):
            raise _bad()
        try:
            pattern = json.loads(f["Pattern"])
        except ValueError as exc:
            raise _bad() from exc
        check_pattern(pattern)
        out.append(pattern)
    return out


def _match_one(m: Any, value: Any) -> bool:
    """One matcher against one present scalar value (``_MISSING`` when absent)."""
    if isinstance(m, dict):
        (kind, arg), = m.items()
        if kind == "exists":
            return (value is not _MISSING) is arg
        if value is _MISSING:
            return False  # only {"exists": false} matches an absent field
        if kind == "prefix":
            return isinstance(value, str) and value.startswith(arg)
        if kind == "suffix":
            return isinstance(value, str) and value.endswith(arg)
        if kind == "equals-ignore-case":
            return isinstance(value, str) and value.lower() == arg.lower()
        if kind == "anything-but":
            if isinstance(arg, dict):
                (sub, s), = arg.items()
                if not isinstance(value, str):
                    return True
                return not (value.startswith(s) if sub == "prefix" else value.endswith(s))
            banned = arg if isinstance(arg, list) else [arg]
            return not any(_equal(b, value) for b in banned)
        if kind == "numeric":
            if not _is_num(value):
                return False
            for op, bound in zip(arg[::2], arg[1::2], strict=True):
                if not _compare(op, value, bound):
                    return False
            return True
        return False
    if value is _MISSING:
        return False
    return _equal(m, value)


def _equal(a: Any, b: Any) -> bool:
    if _is_num(a) and _is_num(b):
        return bool(float(a) == float(b))
    if type(a) is not type(b):
        return False
    return bool(a == b)


def _compare(op: str, v: float, bound: float) -> bool:
    if op == "=":
        return v == bound
    if op == "<":
        return v < bound
    if op == "<=":
        return v <= bound
    if op == ">":
        return v > bound
    return v >= bound


def _match_leaf(matchers: list[Any], value: Any) -> bool:
    if isinstance(value, list):
        if not value:
            return any(isinstance(m, dict) and m.get("exists") is True for m in matchers)
        # exists:false must hold for the field as a whole, the rest for any element.
        return any(
            (isinstance(m, dict) and "exists" in m and _match_one(m, value))
            or any(_match_one(m, v) for v in value)
            for m in matchers
        )
    if isinstance(value, dict):
        return any(isinstance(m, dict) and m.get("exists") is True for m in matchers)
    return any(_match_one(m, value) for m in matchers)


def matches(pattern: Pattern, event: Any) -> bool:
    """Does ``event`` (parsed JSON) match ``pattern`` (a checked pattern)?"""
    if not isinstance(event, dict):
        event = {}
    for key, want in pattern.items():
        if key == "$or":
            if not any(matches(sub, event) for sub in want):
                return False
            continue
        value = event.get(key, _MISSING)
        if isinstance(want, dict):
            if isinstance(value, list):
                if not any(matches(want, v) for v in value if isinstance(v, dict)):
                    return False
            elif not matches(want, value if isinstance(value, dict) else {}):
                return False
        elif not _match_leaf(want, value):
            return False
    return True


def matches_any(patterns: list[Pattern], event: Any) -> bool:
    """The FilterCriteria rule: no filters pass everything, else any filter must match."""
    return not patterns or any(matches(p, event) for p in patterns)


def _maybe_json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def sqs_view(record: dict[str, Any]) -> dict[str, Any]:
    """The record as filters see it: ``body`` parsed when it is JSON (AWS filters SQS that way)."""
    view = dict(record)
    view["body"] = _maybe_json(record.get("body", ""))
    return view


def kinesis_view(record: dict[str, Any]) -> dict[str, Any]:
    """A Kinesis record with ``data`` base64-decoded and parsed when it is JSON."""
    view = dict(record)
    kin = dict(record.get("kinesis", {}))
    try:
        kin["data"] = _maybe_json(base64.b64decode(kin.get("data", "")).decode())
    except (ValueError, UnicodeDecodeError):
        pass
    view["kinesis"] = kin
    # Lambda lets a pattern name "data" at the top level for Kinesis.
    view["data"] = kin.get("data")
    return view
