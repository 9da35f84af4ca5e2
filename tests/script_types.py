"""A function module whose own classes results hold: each kind the runner sends by reference.

Used by the local-backend, launcher and BOINC-harness tests. ``Trap``, ``Reducing`` and
``Stateful`` write a marker file (``MARKER``, set by the test) whenever any of their code runs, so a
test can prove that decoding a hostile record ran none of it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import sys
import typing
from typing import Any

MARKER = ""  # a path; set by tests that check nothing of Trap/Reducing/Stateful runs


def _mark(what: str) -> None:
    if MARKER:
        with open(MARKER, "a") as fh:
            fh.write(what + "\n")


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    name: str
    tags: tuple[str, ...] = ()


class Color(enum.Enum):
    RED = 1
    GREEN = "green"


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


Pair = collections.namedtuple("Pair", "left right")


class Typed(typing.NamedTuple):
    a: int
    b: float = 1.5


class Plain:
    def __init__(self, value: Any) -> None:
        self.value = value
        self.me = self  # a cycle through the instance


class Slotted:
    __slots__ = ("__hidden", "a")

    def __init__(self, a: Any, hidden: Any) -> None:
        self.a = a
        self.__hidden = hidden

    def hidden(self) -> Any:
        return self.__hidden


class AppError(ValueError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


class Descriptor:
    """A data descriptor whose ``__set__`` and ``__set_name__`` leave a mark."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return "descriptor"

    def __set__(self, obj: Any, value: Any) -> None:
        _mark("descriptor __set__")


class Trap:
    """A trusted class whose every hook leaves a mark."""

    guarded = Descriptor()

    def __init__(self) -> None:
        _mark("__init__")

    def __setattr__(self, name: str, value: Any) -> None:
        _mark("__setattr__")
        object.__setattr__(self, name, value)

    def append(self, value: Any) -> None:
        _mark("append")

    def __setitem__(self, key: Any, value: Any) -> None:
        _mark("__setitem__")


class Reducing:
    """Defines its own ``__reduce__``: never rebuilt without explicit trust."""

    def __init__(self, value: Any = None) -> None:
        _mark("Reducing.__init__")
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (Reducing, (self.value,))


class Stateful:
    """Defines its own ``__setstate__``: never rebuilt without explicit trust."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        _mark("Stateful.__setstate__")
        self.__dict__.update(state)


class ReducingError(Exception):
    def __reduce__(self) -> tuple[Any, ...]:
        return (ReducingError, self.args)


def every_kind(n: int) -> dict[str, Any]:
    """One of each kind, nested in containers."""
    return {
        "point": Point(n, -n),
        "frozen": Frozen("f", ("a", "b")),
        "enums": [Color.RED, Color.GREEN, Perm.READ | Perm.WRITE],
        "tuples": (Pair(1, Point(2)), Typed(3)),
        "plain": Plain({"inner": {Color.RED}}),
        "slotted": Slotted([n], "secret"),
        "error": AppError("value", 7),
        "class": Point,
    }


def raise_app_error(code: int) -> None:
    raise AppError("bad input", code)


def raise_reducing_error() -> None:
    raise ReducingError("opaque")


def return_reducing() -> Reducing:
    return Reducing(1)


def return_stateful() -> Stateful:
    return Stateful(2)


def chatty(n: int, out_chars: int = 0) -> int:
    """Prints to both streams; ``out_chars`` extra characters of stdout."""
    print(f"out {n}")
    print(f"err {n}", file=sys.stderr)
    if out_chars:
        sys.stdout.write("x" * out_chars)
    return n
