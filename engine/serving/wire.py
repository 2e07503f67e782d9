"""The daemon's wire format, derived from the request/result dataclasses: never copied field by field.

`to_wire(obj)` is `dataclasses.asdict` in JSON terms; `from_wire(cls, data)` rebuilds `cls` from
its own type hints, checking every field's JSON type (a missing field takes its default, an unknown
one is refused, `true` is no integer) so a new field in `FimRequest` or `StopRule` crosses the
wire with no change here. Two facts the dataclasses cannot say are kept here:

- `LOCAL`: fields that stay in their process (a `CancelToken`: cancelling is closing the request).
- `INSTANTS`: `time.monotonic()` instants, sent as seconds from now and turned back into an instant
  on the other side (two machines' monotonic clocks have nothing in common).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import types
import typing
from typing import Any, TypeVar

from codestral_ls.engine.request import FimRequest, FimResult

LOCAL = frozenset({"cancel"})
INSTANTS = frozenset({"line_deadline"})

T = TypeVar("T")


def to_wire(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    now = time.monotonic()
    for f in dataclasses.fields(obj):
        if f.name in LOCAL:
            continue
        value = getattr(obj, f.name)
        if f.name in INSTANTS and value is not None:
            value = value - now
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_wire(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_wire(cls: type[T], data: Any, where: str = "") -> T:
    """A validated `cls`; ValueError names the first bad field (dotted path)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__} must be a JSON object")
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name not in LOCAL}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown field {where + unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"missing field {where + name!r}")
            continue
        value = _check(hints[name], data[name], where + name)
        if name in INSTANTS and value is not None:
            value = time.monotonic() + value
        values[name] = value
    return cls(**values)


def _check(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _check(rest[0], value, where)
        raise ValueError(f"field {where!r}: unsupported type {hint}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"field {where!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"field {where!r} must have {len(args)} items")
        return tuple(_check(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if dataclasses.is_dataclass(hint):
        return from_wire(hint, value, where + ".")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"field {where!r} must be a number")
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ValueError(f"field {where!r} must be an integer, not true/false")
    if hint in (str, int, bool):
        if not isinstance(value, hint):
            raise ValueError(f"field {where!r} has the wrong type ({type(value).__name__})")
        return value
    raise ValueError(f"field {where!r}: unsupported type {hint}")


def request_from_wire(d: Any) -> FimRequest:
    """A validated FimRequest; ValueError names the first bad field."""
    req = from_wire(FimRequest, d, "")
    if not 0 < req.max_tokens <= 4096:
        raise ValueError("field 'max_tokens' must be between 1 and 4096")
    return req


def result_from_wire(d: Any) -> FimResult:
    if not isinstance(d, dict):
        raise ValueError("result must be a JSON object")
    # A newer daemon may report more counters than this client knows: those are dropped.
    known = {f.name for f in dataclasses.fields(FimResult)}
    return from_wire(FimResult, {k: v for k, v in d.items() if k in known}, "result.")
