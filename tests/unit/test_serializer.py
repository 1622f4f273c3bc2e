"""JSON-only argument encoding: what is accepted, what is refused (and how), size limit, decoding."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from typing import Any

import pytest

from conveyor.errors import PayloadTooLarge, SerializationError
from conveyor.serializer import (
    MAX_DEPTH,
    decode_args,
    decode_value,
    dumps,
    encode_args,
    encode_value,
    loads,
)

LIMIT = 1 << 20


def roundtrip(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return decode_args(encode_args("t", args, kwargs, LIMIT), LIMIT)


# --- round trip -----------------------------------------------------------------------------------


def test_round_trip_of_args_and_kwargs() -> None:
    args = (1, -2.5, "héllo ✓", None, True, False, [1, [2, [3]]], {"a": {"b": [None]}})
    kwargs = {"x": 0, "y": "", "z": [], "w": {}}
    got_args, got_kwargs = roundtrip(args, kwargs)
    assert got_args == list(args)
    assert got_kwargs == kwargs


def test_round_trip_preserves_types() -> None:
    got_args, _ = roundtrip((1, 1.0, True, 0, 0.0, False, "1"), {})
    assert [type(v) for v in got_args] == [int, float, bool, int, float, bool, str]


def test_tuples_become_lists() -> None:
    got_args, got_kwargs = roundtrip(((1, 2),), {"t": (3, (4,))})
    assert got_args == [[1, 2]]
    assert got_kwargs == {"t": [3, [4]]}


def test_empty_call() -> None:
    assert encode_args("t", (), {}, LIMIT) == b"[[],{}]"
    assert decode_args(b"[[],{}]", LIMIT) == ([], {})


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 2**64 - 1, 1e308, -1e-308, 5e-324])
def test_numbers_at_the_edges_round_trip(value: float) -> None:
    assert roundtrip((value,), {})[0] == [value]


def test_encoding_is_canonical_for_dict_order() -> None:
    a = encode_args("t", ({"b": 1, "a": 2},), {"y": 1, "x": 2}, LIMIT)
    b = encode_args("t", ({"a": 2, "b": 1},), {"x": 2, "y": 1}, LIMIT)
    assert a == b


def test_nesting_at_max_depth_is_accepted() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH):
        value = [value]
    assert roundtrip((value,), {})[0] == [value]


# --- refusals -------------------------------------------------------------------------------------

NOT_JSON = [
    pytest.param({1, 2}, id="set"),
    pytest.param(frozenset(), id="frozenset"),
    pytest.param(b"raw", id="bytes"),
    pytest.param(bytearray(b"raw"), id="bytearray"),
    pytest.param(object(), id="object"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), id="datetime"),
    pytest.param(dt.date(2024, 1, 1), id="date"),
    pytest.param(decimal.Decimal("1.5"), id="decimal"),
    pytest.param(uuid.UUID(int=1), id="uuid"),
    pytest.param(1 + 2j, id="complex"),
    pytest.param(2**64, id="int-too-big"),
    pytest.param(-(2**63) - 1, id="int-too-small"),
    pytest.param(len, id="function"),
]


@pytest.mark.parametrize("value", NOT_JSON)
def test_positional_argument_refused_with_its_position(value: Any) -> None:
    with pytest.raises(SerializationError, match=r"mytask: argument 1\b"):
        encode_args("mytask", ("fine", value), {}, LIMIT)


@pytest.mark.parametrize("value", NOT_JSON)
def test_keyword_argument_refused_with_its_name(value: Any) -> None:
    with pytest.raises(SerializationError, match=r"mytask: argument 'payload'"):
        encode_args("mytask", (), {"ok": 1, "payload": value}, LIMIT)


def test_refusal_names_the_type() -> None:
    with pytest.raises(SerializationError, match="set is not JSON-serializable"):
        encode_args("t", ({1},), {}, LIMIT)
    with pytest.raises(SerializationError, match="nan is not a JSON number"):
        encode_args("t", (math.nan,), {}, LIMIT)


@pytest.mark.parametrize("key", [1, None, (1, 2), 1.5, True, b"k"])
def test_non_str_dict_keys_refused(key: Any) -> None:
    with pytest.raises(SerializationError, match=r"argument 0: dict key .* is not a string"):
        encode_args("t", ({key: 1},), {}, LIMIT)


def test_nested_bad_value_names_its_path_in_a_list() -> None:
    with pytest.raises(SerializationError) as info:
        encode_args("t", ([1, [2, {3}]],), {}, LIMIT)
    assert "t: argument 0[1][1]" in str(info.value)


def test_nested_bad_value_names_its_path_in_dicts() -> None:
    with pytest.raises(SerializationError) as info:
        encode_args("t", (), {"opts": {"when": [0, {"at": dt.datetime(2024, 1, 1)}]}}, LIMIT)
    assert "t: argument 'opts'['when'][1]['at']" in str(info.value)
    assert "datetime" in str(info.value)


def test_nested_bad_dict_key_names_its_path() -> None:
    with pytest.raises(SerializationError) as info:
        encode_args("t", ({"a": [{"b": {2: "x"}}]},), {}, LIMIT)
    assert "t: argument 0['a'][0]['b']: dict key 2" in str(info.value)


def test_nested_nan_names_its_path() -> None:
    with pytest.raises(SerializationError, match=r"argument 'xs'\[2\]: nan"):
        encode_args("t", (), {"xs": [1.0, 2.0, math.nan]}, LIMIT)


def test_ten_thousand_deep_list_is_refused_without_recursion_error() -> None:
    value: Any = []
    for _ in range(10_000):
        value = [value]
    with pytest.raises(SerializationError, match=f"nested deeper than {MAX_DEPTH}"):
        encode_args("t", (value,), {}, LIMIT)


def test_ten_thousand_deep_dict_is_refused_without_recursion_error() -> None:
    value: Any = {}
    for _ in range(10_000):
        value = {"k": value}
    with pytest.raises(SerializationError, match=f"nested deeper than {MAX_DEPTH}"):
        encode_args("t", (), {"deep": value}, LIMIT)


def test_one_level_past_max_depth_is_refused() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(SerializationError):
        encode_args("t", (value,), {}, LIMIT)


def test_serialization_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_args("t", ({1},), {}, LIMIT)


class UserId(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Color(enum.Enum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(UserId("u1"), id="str-subclass"),
        pytest.param(Count(3), id="int-subclass"),
        pytest.param(Ratio(0.5), id="float-subclass"),
        pytest.param({"k": [UserId("u1")]}, id="nested-str-subclass"),
        pytest.param(Color.RED, id="plain-enum"),
    ],
)
def test_scalar_subclasses_are_refused_or_encoded_never_a_raw_error(value: Any) -> None:
    # BUG: _check accepts any isinstance(str/int/float), but msgspec refuses subclasses that
    # are not enums, so encode_args raises a bare TypeError("Encoding objects of type UserId is
    # unsupported") that does not name the argument.
    try:
        data = encode_args("t", (value,), {}, LIMIT)
    except SerializationError as exc:
        assert "t: argument 0" in str(exc)
    else:
        assert decode_args(data, LIMIT)[0] == [value]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param(("\ud800",), {}, id="lone-surrogate-value"),
        pytest.param(({"\udcff": 1},), {}, id="lone-surrogate-key"),
        pytest.param((), {"name": "file\udcffname"}, id="surrogateescape-kwarg"),
    ],
)
def test_unencodable_strings_raise_serialization_error(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # BUG: a str with lone surrogates (e.g. os.listdir() output under surrogateescape) passes
    # _check, then msgspec raises UnicodeEncodeError out of encode_args.
    with pytest.raises(SerializationError, match="t: argument"):
        encode_args("t", args, kwargs, LIMIT)


# --- size limit -----------------------------------------------------------------------------------


def test_payload_exactly_at_limit_is_accepted_and_one_byte_over_is_not() -> None:
    args = ("x" * 1000,)
    size = len(encode_args("t", args, {}, LIMIT))
    assert encode_args("t", args, {}, size) == encode_args("t", args, {}, LIMIT)
    with pytest.raises(PayloadTooLarge) as info:
        encode_args("t", args, {}, size - 1)
    assert str(size) in str(info.value)
    assert str(size - 1) in str(info.value)


def test_one_more_byte_of_argument_crosses_the_limit() -> None:
    size = len(encode_args("t", ("x" * 100,), {}, LIMIT))
    encode_args("t", ("x" * 100,), {}, size)
    with pytest.raises(PayloadTooLarge):
        encode_args("t", ("x" * 101,), {}, size)


def test_payload_too_large_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="over the limit"):
        encode_args("big", ("y" * 100,), {}, 10)


def test_limit_counts_encoded_bytes_not_characters() -> None:
    text = "é" * 100  # 200 bytes of UTF-8
    size = len(encode_args("t", (text,), {}, LIMIT))
    assert size > 200
    with pytest.raises(PayloadTooLarge):
        encode_args("t", (text,), {}, size - 1)


# --- decoding stored payloads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00\x01\x02", b"\xff\xfe", b"[[1],{}", b"not json", b"[[],{}]trailing", b"{'a': 1}"],
)
def test_decode_args_of_garbage(garbage: bytes) -> None:
    with pytest.raises(SerializationError):
        decode_args(garbage, LIMIT)


@pytest.mark.parametrize(
    "payload",
    [
        b"null",
        b"1",
        b'"s"',
        b"{}",
        b'{"args": [], "kwargs": {}}',
        b"[]",
        b"[[]]",
        b"[[],{},{}]",
        b"[{},[]]",
        b"[[],[]]",
        b"[{},{}]",
        b"[null,{}]",
        b"[[],null]",
    ],
)
def test_decode_args_of_json_that_is_not_an_args_kwargs_pair(payload: bytes) -> None:
    with pytest.raises(SerializationError, match=r"not an \[args, kwargs\] pair"):
        decode_args(payload, LIMIT)


def test_decode_args_of_oversize_payload() -> None:
    data = encode_args("t", ("x" * 100,), {}, LIMIT)
    assert decode_args(data, len(data)) == (["x" * 100], {})
    with pytest.raises(SerializationError, match="over the limit"):
        decode_args(data, len(data) - 1)


def test_decode_args_of_deeply_nested_payload() -> None:
    with pytest.raises(SerializationError):
        decode_args(b"[" * 100_000 + b"]" * 100_000, 1 << 21)


# --- values (results) and internal data -----------------------------------------------------------


def test_value_round_trip() -> None:
    value = {"sum": 5, "items": [1, 2.5, None, "a"], "ok": True}
    assert decode_value(encode_value(value)) == value
    assert decode_value(encode_value(None)) is None


def test_encode_value_refuses_non_json_naming_where() -> None:
    with pytest.raises(SerializationError, match=r"add: return value\[1\]: set"):
        encode_value([1, {2}], "add: return value")
    with pytest.raises(SerializationError, match="result: nan"):
        encode_value(math.nan)


def test_encode_value_of_str_subclass_is_a_serialization_error() -> None:
    # BUG (same root as above): the worker only catches SerializationError around encode_value,
    # so a task returning a str subclass makes Runner.run raise a bare TypeError.
    try:
        data = encode_value(UserId("u1"))
    except SerializationError:
        return
    assert decode_value(data) == "u1"


def test_decode_value_of_garbage() -> None:
    with pytest.raises(SerializationError):
        decode_value(b"\x00garbage")


def test_decode_value_of_deeply_nested_data() -> None:
    # BUG: decode_args catches RecursionError from msgspec but decode_value does not.
    with pytest.raises(SerializationError):
        decode_value(b"[" * 100_000 + b"]" * 100_000)


def test_dumps_loads_round_trip() -> None:
    record = {"attempt": 1, "type": "ValueError", "traceback": None}
    assert loads(dumps(record)) == record
    assert loads(dumps(record).decode()) == record
