"""JSON-family encoding of task arguments and results.

Only JSON values are accepted: None, bool, int, finite float, str, list/tuple and dict with
str keys. Everything else (bytes, sets, datetimes, arbitrary objects, NaN) is refused at
enqueue with an error naming the argument, so what runs is exactly what was sent. Values of
other types reach here already turned into JSON by ``conveyor.arguments`` (for parameters
annotated with their type), with the payload's third element saying which.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from conveyor.errors import PayloadTooLarge, ResultTooLarge, SerializationError

#: Deepest nesting of lists/dicts accepted in arguments and results.
MAX_DEPTH = 64

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()
#: Exact types only: a subclass of str/int/float (other than bool) may carry state or
#: behaviour that JSON drops, so it is refused by name rather than silently flattened.
_SCALARS = frozenset({str, bool, type(None)})
#: Integers JSON readers take exactly: the int64 and uint64 range.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


#: A value being checked: (value, depth, parent node or None, label). The label is an index or
#: key below the root; at the root, the place named in errors: a string, or (task, argument).
_Node = tuple[Any, int, Any, Any]


def _plain(value: Any) -> bool:
    """A scalar that needs no walk: the common argument, checked without building a node."""
    kind = type(value)
    return kind in _SCALARS or (kind is int and _INT_MIN <= value <= _INT_MAX)


def _path(node: _Node) -> str:
    """The place of a checked value, as errors name it: ``send: argument 'to'[2]``."""
    parts = []
    while node[2] is not None:
        label = node[3]
        parts.append(f"[{label}]" if type(label) is int else f"[{label!r}]")
        node = node[2]
    root = node[3]
    if isinstance(root, tuple):
        task, name = root
        root = f"{task}: argument {name if type(name) is int else repr(name)}"
    return str(root) + "".join(reversed(parts))


def _check(*roots: _Node) -> None:
    """Refuse anything that is not plain JSON; iterative so deep nesting cannot overflow the stack.
    Places are worked out only for an error, not for every value checked."""
    stack = list(reversed(roots))  # the first argument is reported first
    while stack:
        node = stack.pop()
        item, depth = node[0], node[1]
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is int:
            if not _INT_MIN <= item <= _INT_MAX:
                raise SerializationError(
                    f"{_path(node)}: integer of {item.bit_length()} bits is outside the 64-bit range"
                )
            continue
        if kind is float:
            if not math.isfinite(item):
                raise SerializationError(f"{_path(node)}: {item!r} is not a JSON number")
            continue
        if depth >= MAX_DEPTH:
            raise SerializationError(f"{_path(node)}: nested deeper than {MAX_DEPTH} levels")
        if kind is list or kind is tuple:
            stack.extend((v, depth + 1, node, i) for i, v in enumerate(item))
        elif kind is dict:
            for k, v in item.items():
                if type(k) is not str:
                    raise SerializationError(f"{_path(node)}: dict key {k!r} is not a string")
                stack.append((v, depth + 1, node, k))
        else:
            raise SerializationError(
                f"{_path(node)}: {type(item).__name__} is not JSON-serializable "
                "(Conveyor accepts None, bool, int, float, str, list and dict with str keys)"
            )


def _encode(value: Any, where: str) -> bytes:
    """Encode checked JSON; strings that are not valid Unicode (lone surrogates) fail here."""
    try:
        return _encoder.encode(value)
    except (UnicodeEncodeError, TypeError, OverflowError) as exc:
        raise SerializationError(f"{where}: not encodable as JSON ({exc})") from None


def encode_args(
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    max_size: int,
    typed: list[int | str] | None = None,
) -> bytes:
    """Encode a call's arguments as the stored payload ``[args, kwargs]``, or
    ``[args, kwargs, typed]`` when ``typed`` lists arguments (by position or keyword) stored in
    the JSON form of their annotated type (see ``conveyor.arguments``).

    Raises:
        SerializationError: an argument is not JSON; the message names it.
        PayloadTooLarge: the encoding is longer than ``max_size`` bytes.
    """
    roots: list[_Node] = [(arg, 0, None, (task, i)) for i, arg in enumerate(args) if not _plain(arg)]
    if kwargs:
        roots += [(arg, 0, None, (task, name)) for name, arg in kwargs.items() if not _plain(arg)]
    if roots:
        _check(*roots)
    data = _encode((args, kwargs, typed) if typed else (args, kwargs), f"{task}: arguments")
    if len(data) > max_size:
        raise PayloadTooLarge(f"{task}: arguments encode to {len(data)} bytes, over the limit of {max_size}")
    return data


def decode_args(payload: bytes, max_size: int) -> tuple[list[Any], dict[str, Any]]:
    """Decode a stored payload of plain arguments; raises SerializationError if it is not
    ``[list, dict]``."""
    args, kwargs, typed = decode_call(payload, max_size)
    if typed:
        raise SerializationError("payload is not an [args, kwargs] pair: it has typed arguments")
    return args, kwargs


def decode_call(payload: bytes, max_size: int) -> tuple[list[Any], dict[str, Any], list[Any]]:
    """Decode a stored payload into its arguments and the list of its typed ones (empty for a
    plain payload); raises SerializationError unless it is ``[list, dict]`` or
    ``[list, dict, non-empty list]``. The typed marks are checked by ``conveyor.arguments``."""
    if len(payload) > max_size:
        raise SerializationError(f"payload of {len(payload)} bytes is over the limit of {max_size}")
    try:
        value = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SerializationError(f"payload does not decode: {exc}") from None
    if (
        not isinstance(value, list)
        or not 2 <= len(value) <= 3
        or not isinstance(value[0], list)
        or not isinstance(value[1], dict)
        or (len(value) == 3 and (not isinstance(value[2], list) or not value[2]))
    ):
        raise SerializationError("payload is not an [args, kwargs] pair nor [args, kwargs, typed]")
    return value[0], value[1], value[2] if len(value) == 3 else []


def encode_value(value: Any, where: str = "result", max_size: int | None = None) -> bytes:
    """Encode a result (or any JSON value).

    Raises:
        SerializationError: the value is not JSON; the message names where.
        ResultTooLarge: the encoding is longer than ``max_size`` bytes.
    """
    _check((value, 0, None, where))
    data = _encode(value, where)
    if max_size is not None and len(data) > max_size:
        raise ResultTooLarge(f"{where} encodes to {len(data)} bytes, over the limit of {max_size}")
    return data


def decode_value(data: bytes) -> Any:
    """Decode a value written by :func:`encode_value`."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SerializationError(f"value does not decode: {exc}") from None


def dumps(value: Any) -> bytes:
    """Encode trusted internal data (error records, options)."""
    return _encoder.encode(value)


def loads(data: bytes | str) -> Any:
    """Decode trusted internal data."""
    return _decoder.decode(data)
