"""Typed arguments and results: values beyond JSON, carried as JSON, rebuilt by annotation.

A parameter annotated with a type JSON has no word for (``datetime``, ``date``, ``time``,
``UUID``, ``Decimal``, an ``Enum``, a dataclass, a msgspec ``Struct``, a pydantic model, or a
container of them: ``list[UUID]``, ``Order | None``) takes such values. At enqueue its value is
turned into JSON (``msgspec.to_builtins``, or pydantic's ``dump_python(mode="json")`` for
annotations with pydantic models) and rebuilt from that JSON exactly as the worker will rebuild
it (``msgspec.convert`` into the annotation, or pydantic's own validation); a value that does not
fit is refused there, naming the parameter. The stored payload is then
``[args, kwargs, typed]``, where ``typed`` lists the positions (ints) and names (strs) of the
arguments stored in that converted form. The worker rebuilds each of them from its parameter's
annotation in the registered function: the target type never comes from the payload, so a
hostile payload can name no class and run no code; one that does not convert is buried.

Arguments of parameters with plain annotations (``str``, ``int``, ``list[dict[str, Any]]``,
none at all) are stored and passed as before, unchecked against their annotation: a payload
``[args, kwargs]`` (every payload stored before typed arguments) runs as it always did.

Results: a function whose return annotation is such a type has its return value converted the
same way, checked against the annotation by the worker (a value that does not fit fails the
attempt for good, as a non-JSON result does), and rebuilt by ``job.result()``.
"""

from __future__ import annotations

import collections.abc
import inspect
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import msgspec.inspect

from conveyor.errors import ArgumentError, SerializationError

#: Annotations whose values JSON carries as they are (containers are plain if their items are).
_PLAIN = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        None,
        list,
        dict,
        tuple,
        object,
        Any,
        collections.abc.Sequence,
        collections.abc.MutableSequence,
        collections.abc.Mapping,
        collections.abc.MutableMapping,
        collections.abc.Collection,
        collections.abc.Iterable,
        typing.Union,
        types.UnionType,
        inspect.Parameter.empty,
    }
)


def _is_plain(annotation: Any) -> bool:
    """Whether values of ``annotation`` are plain JSON, to be passed through as they are."""
    if isinstance(annotation, typing.TypeVar) or annotation is ...:
        return True
    try:
        if annotation in _PLAIN:
            return True
    except TypeError:  # an unhashable annotation: not one of ours
        return False
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return True
    if origin is typing.Annotated:
        return _is_plain(typing.get_args(annotation)[0])
    if origin is not None and origin in _PLAIN:
        return all(_is_plain(a) for a in typing.get_args(annotation))
    return False


def _has_pydantic_model(annotation: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    if pydantic is None:
        return False
    base = pydantic.BaseModel
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, base):
            return True
        stack.extend(typing.get_args(a))
    return False


class Converter:
    """Turns values of one annotation into JSON and back."""

    __slots__ = ("annotation", "dump", "load")

    def __init__(self, annotation: Any, dump: Callable[[Any], Any], load: Callable[[Any], Any]) -> None:
        self.annotation = annotation
        #: The JSON form of a value (may raise TypeError, ValueError or pydantic's errors).
        self.dump = dump
        #: The annotated value rebuilt from its JSON form (raises ValidationError on a misfit).
        self.load = load

    def name(self) -> str:
        a = self.annotation
        return a.__name__ if isinstance(a, type) else str(a).replace("typing.", "")


def converter(annotation: Any) -> Converter | None:
    """The converter of a typed annotation; None for a plain one.

    Raises:
        TypeError: neither msgspec nor pydantic can rebuild values of ``annotation``.
    """
    if _is_plain(annotation):
        return None
    if _has_pydantic_model(annotation):
        adapter = sys.modules["pydantic"].TypeAdapter(annotation)
        return Converter(
            annotation,
            lambda v: adapter.dump_python(v, mode="json", warnings=False),
            adapter.validate_python,
        )
    custom = _custom_type(msgspec.inspect.type_info(annotation))  # TypeError: not a type at all
    if custom is not None:
        raise TypeError(f"msgspec cannot rebuild {custom.__name__} values")

    def load(data: Any) -> Any:
        return msgspec.convert(data, annotation, str_keys=True)

    def dump(value: Any) -> Any:
        return msgspec.to_builtins(value, str_keys=True)

    return Converter(annotation, dump, load)


def _custom_type(info: msgspec.inspect.Type) -> type | None:
    """The first class inside ``info`` that msgspec would need a hook for, or None."""
    stack: list[Any] = [info]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            return node.cls
        if isinstance(node, msgspec.inspect.Field):
            stack.append(node.type)
        elif isinstance(node, msgspec.inspect.Type):
            for field in node.__struct_fields__:
                value = getattr(node, field)
                if isinstance(value, tuple):
                    stack.extend(value)
                elif isinstance(value, msgspec.inspect.Type | msgspec.inspect.Field):
                    stack.append(value)
    return None


class Signature:
    """How a task's arguments are converted: a converter for each typed parameter.

    Annotations are resolved on first use (so a task may name types defined after it); a
    function whose annotations do not resolve, or name types neither msgspec nor pydantic
    can rebuild, keeps working with plain JSON arguments, and the reason is given to anyone
    who passes it a typed value.

    A conversion raises what the converted class raises: msgspec's and pydantic's errors for a
    value that does not fit, and anything a ``__post_init__`` or a validator raises. Each is a
    misfit of that value (refused at enqueue, buried by the worker), never a worker's failure.
    """

    def __init__(self, task: str, fn: Callable[..., Any], signature: inspect.Signature) -> None:
        self.task = task
        #: Whether any argument is converted: False keeps enqueue on its plain fast path.
        self.typed = False
        #: Converters by parameter name (of ``*args``/``**kwargs``: their items' annotation).
        self.converters: dict[str, Converter] = {}
        #: Why a parameter's annotation cannot be used, by name ("" for the whole function).
        self.problems: dict[str, str] = {}
        self.result: Converter | None = None
        params = list(signature.parameters.values())
        self._positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._by_keyword = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self._var_positional = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
        self._var_keyword = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # noqa: BLE001 - any failure to resolve leaves arguments plain
            self.problems[""] = f"its annotations do not resolve ({type(exc).__name__}: {exc})"
            return
        for name, annotation in hints.items():
            try:
                made = converter(annotation)
            except Exception as exc:  # noqa: BLE001 - a type no library can rebuild leaves it plain
                self.problems[name] = (
                    f"its annotation {annotation!r} is not a type Conveyor can rebuild ({exc})"
                )
                continue
            if made is None:
                continue
            if name == "return":
                self.result = made
            else:
                self.converters[name] = made
        self.typed = bool(self.converters)

    def parameter(self, where: int | str) -> str | None:
        """The parameter an argument (by position or keyword) binds to, or None."""
        if isinstance(where, int):
            if where < len(self._positional):
                return self._positional[where]
            return self._var_positional
        if where in self._by_keyword:
            return where
        return self._var_keyword

    def dump(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], list[int | str]]:
        """The call with typed arguments in their JSON form, and which they are.

        Raises:
            ArgumentError: a typed argument does not fit its parameter's annotation.
        """
        marks: list[int | str] = []
        out_args = list(args)
        for i, value in enumerate(args):
            name = self.parameter(i)
            conv = None if name is None else self.converters.get(name)
            if conv is not None:
                shown = repr(name) if i < len(self._positional) else f"{name!r}[{i - len(self._positional)}]"
                out_args[i] = self._dump(conv, value, shown)
                marks.append(i)
        out_kwargs = kwargs
        for key, value in kwargs.items():
            name = self.parameter(key)
            conv = None if name is None else self.converters.get(name)
            if conv is not None:
                if out_kwargs is kwargs:
                    out_kwargs = dict(kwargs)
                out_kwargs[key] = self._dump(conv, value, repr(key) if key == name else f"{name!r}[{key!r}]")
                marks.append(key)
        return tuple(out_args), out_kwargs, marks

    def _dump(self, conv: Converter, value: Any, shown: str) -> Any:
        try:
            data = conv.dump(value)
            conv.load(data)  # what the worker will do: a misfit is refused here, not there
        except Exception as exc:  # noqa: BLE001 - the class may raise anything
            raise ArgumentError(
                f"{self.task}: argument {shown} does not fit its annotation {conv.name()}: {_first_line(exc)}"
            ) from None
        return data

    def load(self, args: list[Any], kwargs: dict[str, Any], marks: list[Any]) -> None:
        """Rebuild, in place, the typed arguments of a stored call.

        Raises:
            SerializationError: a mark names no argument or no typed parameter, or an argument
                does not convert to its parameter's annotation.
        """
        for where in marks:
            if not (
                (type(where) is int and 0 <= where < len(args)) or (type(where) is str and where in kwargs)
            ):
                raise SerializationError(f"payload marks {where!r:.40} typed, and has no such argument")
            name = self.parameter(where)
            conv = None if name is None else self.converters.get(name)
            if conv is None:
                why = self.problems.get(name or "", self.problems.get("", "it has no such annotation"))
                raise SerializationError(
                    f"{self.task}: argument {where!r} was sent typed, but the parameter it binds to"
                    f" ({name!r}) cannot rebuild it: {why}"
                )
            container: Any = args if type(where) is int else kwargs
            try:
                container[where] = conv.load(container[where])
            except Exception as exc:  # noqa: BLE001 - the class may raise anything
                raise SerializationError(
                    f"{self.task}: argument {where!r} does not convert to {conv.name()}: {_first_line(exc)}"
                ) from None

    def untyped(self, exc: SerializationError) -> SerializationError:
        """A plain-JSON refusal of a value, told how a typed value is sent."""
        why = "; ".join(f"{k or self.task}: {v}" for k, v in self.problems.items())
        hint = (
            " (a datetime, UUID, Decimal, Enum, dataclass, msgspec Struct or pydantic model is"
            " sent by annotating its parameter with its type" + (f"; here {why}" if why else "") + ")"
        )
        return SerializationError(str(exc) + hint)

    def dump_result(self, value: Any, where: str) -> Any:
        """A return value in its JSON form, checked against the return annotation.

        Raises:
            SerializationError: it does not fit the annotation.
        """
        assert self.result is not None
        try:
            data = self.result.dump(value)
            self.result.load(data)
        except Exception as exc:  # noqa: BLE001 - the class may raise anything
            raise SerializationError(
                f"{where} does not fit its annotation {self.result.name()}: {_first_line(exc)}"
            ) from None
        return data

    def load_result(self, data: Any) -> Any:
        """A stored result rebuilt by the return annotation; a result that does not convert
        (stored before typed results, by another version of the function) is returned as it is."""
        if self.result is None or data is None:
            return data
        try:
            return self.result.load(data)
        except Exception:  # noqa: BLE001 - the class may raise anything
            return data


def _first_line(exc: BaseException) -> str:
    """An error's text on one line, cut to 300 characters."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__
