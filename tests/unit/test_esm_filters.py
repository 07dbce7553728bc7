"""The filter-criteria grammar (sans-IO): validation and matching."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from flocid.esm.filters import (
    INVALID,
    kinesis_view,
    matches,
    matches_any,
    parse_criteria,
    sqs_view,
)
from flocid.esm.pollers import failed_items
from flocid.lambda_.errors import InvalidParameterValue


def crit(*patterns: Any) -> dict[str, Any]:
    return {"Filters": [{"Pattern": p if isinstance(p, str) else json.dumps(p)} for p in patterns]}


@pytest.mark.parametrize("bad", [
    "simple string", "[1, 2]", '{"eventName": ["INSERT"=123}]}', "{}", '{"a": "x"}', '{"a": []}',
    '{"a": [{"prefix": 1}]}', '{"a": [{"unknown": "x"}]}', '{"a": [{"numeric": [">", "x"]}]}',
    '{"a": [{"numeric": ["!", 1]}]}', '{"a": [{"exists": "yes"}]}', '{"$or": [{"a": ["x"]}]}',
    '{"a": [{"prefix": "x", "suffix": "y"}]}', '{"a": [{"anything-but": []}]}',
])
def test_invalid_patterns_are_refused(bad: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        parse_criteria(crit(bad))
    assert info.value.message == INVALID


def test_criteria_shape() -> None:
    assert parse_criteria(None) == []
    assert parse_criteria({"Filters": []}) == []
    with pytest.raises(InvalidParameterValue):
        parse_criteria({"Filters": [{"NoPattern": "x"}]})
    with pytest.raises(InvalidParameterValue):
        parse_criteria("x")


def m(pattern: dict[str, Any], event: Any) -> bool:
    parse_criteria(crit(pattern))  # every pattern used here must be valid
    return matches(pattern, event)


def test_exact_values() -> None:
    assert m({"a": ["x", "y"]}, {"a": "y"})
    assert not m({"a": ["x"]}, {"a": "X"})
    assert m({"n": [5]}, {"n": 5.0})
    assert not m({"n": [5]}, {"n": "5"})
    assert m({"z": [None]}, {"z": None})
    assert m({"b": [True]}, {"b": True}) and not m({"b": [True]}, {"b": 1})
    assert not m({"a": ["x"]}, {})


def test_nested_and_arrays() -> None:
    assert m({"body": {"kind": ["a"]}}, {"body": {"kind": "a", "other": 1}})
    assert not m({"body": {"kind": ["a"]}}, {"body": {"kind": "b"}})
    assert m({"tags": ["red"]}, {"tags": ["blue", "red"]})
    assert not m({"tags": ["green"]}, {"tags": ["blue", "red"]})
    assert m({"items": {"id": [2]}}, {"items": [{"id": 1}, {"id": 2}]})
    # every key must match (AND)
    assert not m({"a": ["x"], "b": ["y"]}, {"a": "x", "b": "z"})


def test_prefix_suffix_ignore_case() -> None:
    assert m({"a": [{"prefix": "ab"}]}, {"a": "abc"}) and not m({"a": [{"prefix": "ab"}]}, {"a": "cab"})
    assert m({"a": [{"suffix": ".png"}]}, {"a": "x.png"}) and not m({"a": [{"suffix": ".png"}]}, {"a": "x.jpg"})
    assert m({"a": [{"equals-ignore-case": "HeLLo"}]}, {"a": "hello"})
    assert not m({"a": [{"prefix": "1"}]}, {"a": 12})


def test_anything_but() -> None:
    assert m({"a": [{"anything-but": "x"}]}, {"a": "y"}) and not m({"a": [{"anything-but": "x"}]}, {"a": "x"})
    assert not m({"a": [{"anything-but": ["x", "y"]}]}, {"a": "y"})
    assert m({"n": [{"anything-but": [1, 2]}]}, {"n": 3}) and not m({"n": [{"anything-but": 1}]}, {"n": 1.0})
    assert m({"a": [{"anything-but": {"prefix": "int"}}]}, {"a": "prod"})
    assert not m({"a": [{"anything-but": {"prefix": "int"}}]}, {"a": "internal"})
    assert not m({"a": [{"anything-but": {"suffix": "x"}}]}, {"a": "box"})
    assert not m({"a": [{"anything-but": "x"}]}, {})  # an absent field is not "anything but"


def test_numeric() -> None:
    p = {"n": [{"numeric": [">", 0, "<=", 5]}]}
    assert m(p, {"n": 5}) and m(p, {"n": 0.1})
    assert not m(p, {"n": 0}) and not m(p, {"n": 6}) and not m(p, {"n": "3"})
    assert m({"n": [{"numeric": ["=", 3]}]}, {"n": 3.0})
    assert m({"n": [{"numeric": [">=", 10]}]}, {"n": 10}) and not m({"n": [{"numeric": ["<", 10]}]}, {"n": 10})


def test_exists() -> None:
    assert m({"a": [{"exists": True}]}, {"a": "anything"})
    assert not m({"a": [{"exists": True}]}, {"b": 1})
    assert m({"a": [{"exists": False}]}, {"b": 1})
    assert not m({"a": [{"exists": False}]}, {"a": None})
    assert m({"a": {"b": [{"exists": False}]}}, {"a": {"c": 1}})


def test_or() -> None:
    p = {"$or": [{"a": ["x"]}, {"b": [{"numeric": [">", 5]}]}]}
    assert m(p, {"a": "x"}) and m(p, {"b": 6}) and not m(p, {"a": "y", "b": 1})
    # several filters: any may match; none configured: everything passes
    pats = parse_criteria(crit({"a": ["1"]}, {"a": ["2"]}))
    assert matches_any(pats, {"a": "2"}) and not matches_any(pats, {"a": "3"})
    assert matches_any([], {"whatever": 1})


def test_sqs_body_views() -> None:
    rec = {"body": json.dumps({"kind": "a"}), "messageId": "1"}
    assert m({"body": {"kind": ["a"]}}, sqs_view(rec))
    plain = {"body": "hello world", "messageId": "1"}
    assert m({"body": [{"prefix": "hello"}]}, sqs_view(plain))
    assert not m({"body": {"kind": ["a"]}}, sqs_view(plain))


def test_kinesis_data_is_decoded() -> None:
    rec = {"kinesis": {"data": base64.b64encode(json.dumps({"t": 42}).encode()).decode()}}
    assert m({"data": {"t": [{"numeric": [">", 40]}]}}, kinesis_view(rec))
    assert m({"kinesis": {"data": {"t": [42]}}}, kinesis_view(rec))


def test_batch_item_failures_response() -> None:
    ids = ["a", "b", "c"]
    assert failed_items(b"", ids) == [] and failed_items(b"null", ids) == []
    assert failed_items(b'{"batchItemFailures": []}', ids) == []
    assert failed_items(b'{"batchItemFailures": [{"itemIdentifier": "b"}]}', ids) == ["b"]
    # malformed: the whole batch fails
    assert failed_items(b'{"batchItemFailures": [{"nope": 1}]}', ids) is None
    assert failed_items(b'{"batchItemFailures": [{"itemIdentifier": ""}]}', ids) is None
    assert failed_items(b'{"batchItemFailures": [{"itemIdentifier": "zzz"}]}', ids) is None
    assert failed_items(b'{"batchItemFailures": "x"}', ids) is None
    assert failed_items(b"not json", ids) is None
