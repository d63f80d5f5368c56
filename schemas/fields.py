"""Wire fields declared once. A session message is a frozen dataclass whose fields, in order,
are the msgpack array's fields after `[version, type]`; each field's `wire(...)` metadata says
how the field is checked on decode, how it is written on encode and what it is when the array
ends before it. `encode_fields` and `decode_fields` walk that declaration, so adding a field
to a message is one line: append it, with a default, after the message's last field.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, WireError

MAX_TOKEN_ID = 2**31 - 1
REQUIRED: Any = object()  # `Wire.absent` of a field the array must hold

# A bound: a number, a `Limits` attribute name, or f(limits, fields decoded so far).
Bound = Any


class Reader:
    """Typed, bounded access to a decoded array's fields, naming each field in errors.
    Its methods `int`, `bytes` and `str` shadow the builtins in the class body: annotations after
    them name `builtins.int` and the like."""

    def __init__(self, items: list[Any], mtype: Any, limits: Any):
        self.items = items
        self.mtype = mtype
        self.limits = limits

    def bad(self, name: str, what: str, code: ErrorCode = ErrorCode.MALFORMED) -> WireError:
        return WireError(code, f"{self.mtype.name} field '{name}' {what}")

    def bound(self, value: Bound, got: dict[str, Any]) -> Any:
        if isinstance(value, str):
            return getattr(self.limits, value)
        return value(self.limits, got) if callable(value) else value

    def get(self, index: int, name: str, default: Any = ...) -> Any:
        if index < len(self.items):
            return self.items[index]
        if default is ...:
            raise self.bad(name, "is missing")
        return default

    def int(self, index: int, name: str, lo: int, hi: int, default: Any = ...) -> int:
        value = self.get(index, name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(name, f"must be an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self.bad(name, f"must be in [{lo}, {hi}], got {value}", ErrorCode.OUT_OF_RANGE)
        return value

    def float(self, index: builtins.int, name: str, lo: float, hi: float, default: Any = ...) -> float:
        value = self.get(index, name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.bad(name, f"must be a number, got {type(value).__name__}")
        value = float(value)
        if not (lo <= value <= hi):  # also rejects NaN
            raise self.bad(name, f"must be in [{lo}, {hi}], got {value}", ErrorCode.OUT_OF_RANGE)
        return value

    def bool(self, index: builtins.int, name: str, default: Any = ...) -> bool:
        value = self.get(index, name, default)
        if not isinstance(value, bool):
            raise self.bad(name, f"must be a boolean, got {type(value).__name__}")
        return value

    def bytes(self, index: builtins.int, name: str, size: builtins.int) -> bytes:
        value = self.get(index, name)
        if not isinstance(value, bytes) or len(value) != size:
            raise self.bad(name, f"must be {size} bytes")
        return value

    def blob(self, index: builtins.int, name: str, max_len: builtins.int) -> builtins.bytes:
        value = self.get(index, name)
        if not isinstance(value, bytes):
            raise self.bad(name, f"must be bytes, got {type(value).__name__}")
        if len(value) > max_len:
            raise self.bad(name, f"is {len(value)} bytes, limit {max_len}", ErrorCode.OVERSIZE)
        return value

    def str(self, index: builtins.int, name: str, default: Any = ...) -> str:
        value = self.get(index, name, default)
        if not isinstance(value, str):
            raise self.bad(name, f"must be a string, got {type(value).__name__}")
        if len(value) > self.limits.max_text_chars:
            raise self.bad(name, f"is longer than {self.limits.max_text_chars} characters", ErrorCode.OVERSIZE)
        return value

    def tokens(self, index: builtins.int, name: builtins.str, max_len: builtins.int,
               default: Any = ...) -> list[builtins.int]:
        value = self.get(index, name, default)
        if not isinstance(value, list):
            raise self.bad(name, f"must be an array of token ids, got {type(value).__name__}")
        if len(value) > max_len:
            raise self.bad(name, f"has {len(value)} entries, limit {max_len}", ErrorCode.OVERSIZE)
        for t in value:
            if isinstance(t, bool) or not isinstance(t, int):
                raise self.bad(name, "must hold only integers")
            if not 0 <= t <= MAX_TOKEN_ID:
                raise self.bad(name, f"holds token id {t} outside [0, {MAX_TOKEN_ID}]", ErrorCode.OUT_OF_RANGE)
        return list(value)


# check(reader, index, name, fields decoded so far) -> the field's value
Check = Callable[[Reader, int, str, dict[str, Any]], Any]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Wire:
    """How one field travels. `absent`: its value when the array ends before it (REQUIRED: an
    error). `nil`: msgpack nil is valid and means None (an absent nil field is None too).
    `omit_none`: None is written as nothing rather than nil (a message's last field only)."""

    check: Check
    to_wire: Callable[[Any], Any] = _same
    absent: Any = REQUIRED
    nil: bool = False
    omit_none: bool = False


def wire(spec: Wire, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that travels as `spec` says (`default`: the Python default only)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"wire": spec})


# ---------------------------------------------------------------- field kinds

def integer(lo: Bound, hi: Bound, *, nil: bool = False, to_wire: Callable[[Any], Any] = _same) -> Wire:
    return Wire(lambda r, i, n, got: r.int(i, n, r.bound(lo, got), r.bound(hi, got)), to_wire,
                None if nil else REQUIRED, nil)


def number(lo: float, hi: float) -> Wire:
    return Wire(lambda r, i, n, got: r.float(i, n, lo, hi), float)


def boolean(absent: Any = REQUIRED) -> Wire:
    return Wire(lambda r, i, n, got: r.bool(i, n), absent=absent)


def text(absent: Any = REQUIRED) -> Wire:
    return Wire(lambda r, i, n, got: r.str(i, n), absent=absent)


def fixed_bytes(size: int, *, nil: bool = False) -> Wire:
    return Wire(lambda r, i, n, got: r.bytes(i, n, size), absent=None if nil else REQUIRED, nil=nil)


def blob(limit: Bound) -> Wire:
    return Wire(lambda r, i, n, got: r.blob(i, n, r.bound(limit, got)))


def token_ids(limit: Bound, *, absent: Any = REQUIRED, nil: bool = False) -> Wire:
    """An array of token ids; `nil`: nil or absent means None."""
    return Wire(lambda r, i, n, got: r.tokens(i, n, r.bound(limit, got)), list,
                None if nil else absent, nil)


def nested(check: Check, to_wire: Callable[[Any], Any], *, omit_none: bool = False) -> Wire:
    """A nil-able field of several parts (`check` sees the raw array, never nil)."""
    return Wire(check, to_wire, None, True, omit_none)


# ---------------------------------------------------------------- the walks

@functools.cache
def wire_fields(cls: type) -> tuple[tuple[str, Wire], ...]:
    """(name, spec) of a message class's wire fields, in wire order."""
    return tuple((f.name, f.metadata["wire"]) for f in dataclasses.fields(cls))


def encode_fields(msg: Any) -> list[Any]:
    """A message's fields after `[version, type]`, in wire order."""
    out: list[Any] = []
    for name, spec in wire_fields(type(msg)):  # type: ignore[arg-type]  # mypy: type[Any] is not Hashable
        value = getattr(msg, name)
        if value is None and spec.omit_none:
            continue
        out.append(None if value is None and spec.nil else spec.to_wire(value))
    return out


def decode_fields(cls: type, reader: Reader, first: int = 2) -> dict[str, Any]:
    """Each declared field of `cls`, read from `reader.items[first:]` and checked in order."""
    got: dict[str, Any] = {}
    for index, (name, spec) in enumerate(wire_fields(cls), start=first):
        if spec.nil and reader.get(index, name, None) is None:
            got[name] = None
        elif index >= len(reader.items) and spec.absent is not REQUIRED:
            got[name] = copy.copy(spec.absent)
        else:
            got[name] = spec.check(reader, index, name, got)
    return got
