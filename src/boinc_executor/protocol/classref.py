"""The script's own classes, sent by reference: volunteer-side encoding, master-side rebuilding.

A result often holds instances of classes the user's script defines: dataclasses,
enums, namedtuples, exceptions, plain classes. On the volunteer those classes
exist only as cloudpickle rebuilt them from the program file, and pickling an
instance the usual way would ship the class *by value* (code the master must
never run) or by a ``__reduce__`` the master would have to call. So the runner
pickles results with :class:`ResultPickler`, which writes every such instance as a
*class reference* instead::

    REDUCE  classref_new(kind, module, qualname, data)    -> inert ClassRef placeholder
    REDUCE  classref_fill(<that placeholder>, state)      (plain data: __dict__ / slots)

``kind`` is one of :data:`KINDS`; ``data`` is the enum member's ``(name, value)``, a
namedtuple's field values or an exception's ``args``; ``state`` is
``(dict_state, slot_state)``. The master's unpickler (:mod:`.decoding`) maps those two
names to its own functions, which only record placeholders: the pickle stream itself
can never reach a class of the script. After the stream is read, :class:`Rebuilder`
replaces each placeholder by an instance of the class the *master* resolves for
``(module, qualname)`` from the batch's trusted set, built only with the class's
``__new__``, an ``Enum`` lookup, ``tuple.__new__`` for a namedtuple, and plain state
assignment through the instance's ``__dict__`` and slot descriptors: no ``__init__``,
``__setattr__``, property setter or ``__setstate__`` ever runs. A class with its own
``__reduce__``/``__setstate__`` is not sent this way (:func:`classify` says so on both
sides); pickle's own protocol carries it, and the master accepts it only when the user
trusts the type explicitly.

This module is shipped in ``pyboinc.zip``: it imports only the standard library and
:mod:`boinc_executor.errors`.
"""

from __future__ import annotations

import abc
import collections
import enum
import io
import pickle
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from ..errors import ResultDecodeError, UnsafeResultError

__all__ = [
    "KINDS",
    "ClassRef",
    "Rebuilder",
    "ResultPickler",
    "classify",
    "classref_fill",
    "classref_new",
    "dumps",
    "exception_blob",
    "is_library_class",
    "is_library_module",
]

KIND_OBJECT = "object"
KIND_ENUM = "enum"
KIND_NAMEDTUPLE = "namedtuple"
KIND_EXCEPTION = "exception"
KIND_CLASS = "class"
KINDS = frozenset({KIND_OBJECT, KIND_ENUM, KIND_NAMEDTUPLE, KIND_EXCEPTION, KIND_CLASS})

# Methods that make pickling (and so unpickling) run a class's own code.
_STATE_METHODS = (
    "__reduce__",
    "__reduce_ex__",
    "__setstate__",
    "__getstate__",
    "__getnewargs__",
    "__getnewargs_ex__",
)
# Modules whose *generated* state methods only move plain data (dataclass slots,
# namedtuple fields); a class's own copies of these are not "its own code".
_GENERATED = frozenset({"dataclasses", "collections"})
_PLAIN_BASES = frozenset({object, typing.Generic, abc.ABC})
_METACLASSES = frozenset({type, abc.ABCMeta})
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, range, slice})


def is_library_module(module: str) -> bool:
    """Whether a module comes with Python (builtins or the standard library)."""
    top = module.partition(".")[0]
    return top == "builtins" or top in sys.stdlib_module_names


def is_library_class(cls: type) -> bool:
    """Whether ``cls`` comes with Python (builtins or the standard library)."""
    module = getattr(cls, "__module__", None)
    # A class with nothing to name it by is never sent by reference.
    return not isinstance(module, str) or is_library_module(module)


def _has_own_state_code(cls: type) -> bool:
    namespace = vars(cls)
    for name in _STATE_METHODS:
        method = namespace.get(name)
        if method is None:
            continue
        function = getattr(method, "__func__", method)
        if getattr(function, "__module__", None) not in _GENERATED:
            return True
    return False


def classify(cls: type) -> str | None:
    """How instances of ``cls`` travel by reference, or None when they do not.

    Both sides use it: the runner to choose the encoding, the master to refuse a
    reference whose class does not fit the kind it claims.
    """
    if is_library_class(cls):
        return None
    own = [c for c in cls.__mro__ if not is_library_class(c)]
    library = [c for c in cls.__mro__ if is_library_class(c)]
    if any(_has_own_state_code(c) for c in own):
        return None
    if issubclass(cls, enum.Enum):
        return KIND_ENUM
    if type(cls) not in _METACLASSES:
        return None
    if issubclass(cls, BaseException):
        plain = all(c is object or (c.__module__ == "builtins") for c in library)
        return KIND_EXCEPTION if plain else None
    if issubclass(cls, tuple):
        fields = getattr(cls, "_fields", None)
        named = isinstance(fields, tuple) and all(type(f) is str for f in fields)
        plain = all(c is tuple or c in _PLAIN_BASES for c in library)
        return KIND_NAMEDTUPLE if named and plain else None
    return KIND_OBJECT if all(c in _PLAIN_BASES for c in library) else None


# --------------------------------------------------------------------------- wire format


class ClassRef:
    """An inert placeholder for a class reference while a payload is being read.

    It accepts nothing from the pickle stream beyond its constructor's plain
    arguments: ``BUILD``, ``APPEND`` or ``SETITEM`` on it fail, so hostile opcodes
    cannot reach the class it names.
    """

    __slots__ = ("data", "filled", "kind", "module", "qualname", "state")

    def __init__(self, kind: Any, module: Any, qualname: Any, data: Any) -> None:
        if kind not in KINDS or type(module) is not str or type(qualname) is not str:
            raise ResultDecodeError("malformed class reference in a result payload")
        self.kind: str = kind
        self.module: str = module
        self.qualname: str = qualname
        self.data = data
        self.state: Any = None
        self.filled = False

    def fill(self, state: Any) -> None:
        """Record the instance's plain state (once)."""
        if self.filled or self.kind in (KIND_ENUM, KIND_CLASS):
            raise ResultDecodeError(f"class reference {self.name} has state it cannot take")
        self.state = state
        self.filled = True

    @property
    def name(self) -> str:
        """``module.qualname``, for messages."""
        return f"{self.module}.{self.qualname}"

    def __setstate__(self, state: Any) -> None:
        raise ResultDecodeError("a result payload tried to set state on a class reference")


def classref_new(kind: str, module: str, qualname: str, data: Any) -> ClassRef:
    """Wire-format entry for a class reference (the master's unpickler substitutes its own)."""
    return ClassRef(kind, module, qualname, data)


def classref_fill(ref: ClassRef, state: Any) -> None:
    """Wire-format entry for a reference's state (the master's unpickler substitutes its own)."""
    if type(ref) is not ClassRef:
        raise ResultDecodeError("class-reference state given for something else")
    ref.fill(state)


def _slot_members(cls: type) -> list[tuple[str, Any]]:
    """The slot descriptors the class's own (non-library) classes define."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if is_library_class(klass):
            continue
        for name, member in vars(klass).items():
            if isinstance(member, types.MemberDescriptorType):
                found.setdefault(name, member)
    return list(found.items())


def _instance_state(
    obj: Any, cls: type, slots: list[tuple[str, Any]]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(__dict__ copy, slot values)`` of an instance, as plain dicts."""
    namespace = getattr(obj, "__dict__", None)
    dict_state = dict(namespace) if isinstance(namespace, dict) and namespace else None
    values: dict[str, Any] = {}
    for name, member in slots:
        try:
            values[name] = member.__get__(obj, cls)
        except AttributeError:
            continue  # an unset slot stays unset
    return dict_state, values or None


class ResultPickler(pickle.Pickler):
    """The runner's result pickler: the script's classes go by reference, never by value."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        # Per class: (kind, module, qualname) and its slots, or None (pickled as usual).
        self._layouts: dict[type, tuple[tuple[str, str, str], list[tuple[str, Any]]] | None] = {}

    def _layout(self, cls: type) -> tuple[tuple[str, str, str], list[tuple[str, Any]]] | None:
        try:
            return self._layouts[cls]
        except KeyError:
            kind = classify(cls)
            layout: tuple[tuple[str, str, str], list[tuple[str, Any]]] | None = None
            if kind is not None:
                slots = [] if kind == KIND_ENUM else _slot_members(cls)
                layout = ((kind, cls.__module__, cls.__qualname__), slots)
            self._layouts[cls] = layout
            return layout

    def reducer_override(self, obj: Any) -> Any:
        """Write classes and instances of the script's classes as class references."""
        if isinstance(obj, type):
            if is_library_class(obj):
                return NotImplemented
            return classref_new, (KIND_CLASS, obj.__module__, obj.__qualname__, None)
        cls = type(obj)
        layout = self._layout(cls)
        if layout is None:
            return NotImplemented
        name, slots = layout
        kind = name[0]
        if kind == KIND_ENUM:
            return classref_new, (*name, (obj._name_, obj._value_))
        if kind == KIND_NAMEDTUPLE:
            data: Any = tuple(obj)
        elif kind == KIND_EXCEPTION:
            data = tuple(obj.args)
        else:
            data = None
        state = _instance_state(obj, cls, slots)
        if state == (None, None):
            return classref_new, (*name, data)
        return classref_new, (*name, data), state, None, None, classref_fill


def dumps(value: Any) -> bytes:
    """Pickle ``value`` with :class:`ResultPickler`."""
    buffer = io.BytesIO()
    ResultPickler(buffer).dump(value)
    return buffer.getvalue()


def exception_blob(exc: BaseException) -> bytes | None:
    """An exception of the script's own class, pickled by reference for an error record.

    Returns None for built-in exceptions (rebuilt from the record's plain fields)
    and for exceptions that cannot travel by reference (the master then raises a
    ``RemoteError``).
    """
    if classify(type(exc)) is None:
        return None
    try:
        return dumps(exc)
    except Exception:
        return None


# --------------------------------------------------------------------------- rebuilding

Resolve = Callable[[str, str], type]


def _descriptor(cls: type, name: str) -> Any:
    """The attribute ``name`` as found on the class's MRO, without running any code."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


class Rebuilder:
    """Replaces the placeholders of one decoded payload by instances of resolved classes.

    Args:
        resolve: maps ``(module, qualname)`` to a class of the batch's trusted set,
            raising :class:`~boinc_executor.errors.UnsafeResultError` otherwise.
        refs: every placeholder the payload created, to prove none is left behind.
    """

    def __init__(self, resolve: Resolve, refs: list[ClassRef]) -> None:
        self._resolve = resolve
        self._refs = refs
        self._done: dict[int, Any] = {}
        self._seen: set[int] = set()
        self._classes: dict[tuple[str, str], tuple[Any, str | None]] = {}
        self._attributes: dict[tuple[type, str], Any] = {}

    def rebuild(self, value: Any) -> Any:
        """``value`` with every placeholder replaced, containers updated in place."""
        result = self._value(value)
        left = [r for r in self._refs if id(r) not in self._done]
        if left:
            raise ResultDecodeError(
                f"the result holds {left[0].name} inside an object the decoder does not "
                "look into; return it in a list, tuple, dict, set, deque or another "
                "script class instead"
            )
        return result

    def _value(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _ATOMS:
            return obj
        key = id(obj)
        if key in self._done:
            return self._done[key]
        if kind is ClassRef:
            return self._build(obj)
        if key in self._seen:
            return obj  # a container on the current path (a cycle)
        self._seen.add(key)
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                new = self._value(item)
                if new is not item:
                    list.__setitem__(obj, i, new)
        elif isinstance(obj, dict):
            old = list(obj.items())
            items = [(self._value(k), self._value(v)) for k, v in old]
            if any(a is not k or b is not v for (a, b), (k, v) in zip(items, old, strict=True)):
                obj.clear()
                obj.update(items)
        elif isinstance(obj, collections.deque):
            values = [self._value(v) for v in obj]
            obj.clear()
            obj.extend(values)
        elif kind is tuple:
            values = [self._value(v) for v in obj]
            if any(a is not b for a, b in zip(values, obj, strict=True)):
                obj = tuple(values)
        elif kind in (set, frozenset):
            values = [self._value(v) for v in obj]
            if any(a is not b for a, b in zip(values, obj, strict=True)):
                obj = kind(values)
        self._done[key] = obj
        return obj

    def _class(self, ref: ClassRef) -> tuple[Any, str | None]:
        """The resolved class and its kind, once per name and payload."""
        key = (ref.module, ref.qualname)
        found = self._classes.get(key)
        if found is None:
            cls = self._resolve(ref.module, ref.qualname)
            found = self._classes[key] = (cls, classify(cls))
        return found

    def _attribute(self, cls: type, name: str) -> Any:
        key = (cls, name)
        if key not in self._attributes:
            self._attributes[key] = _descriptor(cls, name)
        return self._attributes[key]

    def _build(self, ref: ClassRef) -> Any:
        cls, kind = self._class(ref)
        if ref.kind == KIND_CLASS:
            self._done[id(ref)] = cls
            return cls
        if kind != ref.kind:
            raise UnsafeResultError(_kind_refusal(ref, cls, kind))
        if kind == KIND_ENUM:
            instance: Any = self._enum_member(ref, cls)
        elif kind == KIND_NAMEDTUPLE:
            fields = cls._fields
            if type(ref.data) is not tuple or len(ref.data) != len(fields):
                raise ResultDecodeError(f"{ref.name} arrived with the wrong number of fields")
            instance = tuple.__new__(cls, [self._value(v) for v in ref.data])
        elif kind == KIND_EXCEPTION:
            if type(ref.data) is not tuple:
                raise ResultDecodeError(f"{ref.name} arrived without its args")
            args = tuple(self._value(v) for v in ref.data)
            base = next(c for c in cls.__mro__ if is_library_class(c))
            instance = base.__new__(cls, *args)
            _ARGS.__set__(instance, args)
        else:
            instance = cls.__new__(cls)
        self._done[id(ref)] = instance
        if ref.filled:
            self._assign(ref, cls, instance)
        return instance

    def _enum_member(self, ref: ClassRef, cls: type) -> Any:
        data = ref.data
        if type(data) is not tuple or len(data) != 2:
            raise ResultDecodeError(f"{ref.name} arrived without its member")
        name, value = data
        members: dict[str, Any] = vars(cls).get("_member_map_", {})
        if type(name) is str and name in members:
            return members[name]
        value = self._value(value)
        if type(value) not in (int, str, float, bytes, bool):
            raise ResultDecodeError(f"{ref.name} arrived with a member value that is not plain")
        return cls(value)

    def _assign(self, ref: ClassRef, cls: type, instance: Any) -> None:
        state = ref.state
        if type(state) is not tuple or len(state) != 2:
            raise ResultDecodeError(f"{ref.name} arrived with malformed state")
        dict_state, slot_state = state
        for part in (dict_state, slot_state):
            if part is not None and (
                type(part) is not dict or any(type(k) is not str for k in part)
            ):
                raise ResultDecodeError(f"{ref.name} arrived with malformed state")
        # cloudpickle rebuilds a class sent by value without its __slots__, so the
        # volunteer's __dict__ may hold what the master's class keeps in slots: each
        # name goes where this class can hold it, by plain assignment only.
        namespace = _plain_dict(self._attribute(cls, "__dict__"), cls, instance)
        for part in (dict_state, slot_state):
            for name, value in (part or {}).items():
                member = self._attribute(cls, name)
                if type(member) is types.MemberDescriptorType:
                    member.__set__(instance, self._value(value))
                elif namespace is not None:
                    namespace[name] = self._value(value)
                else:
                    raise UnsafeResultError(
                        f"{ref.name} arrived with state for {name!r}, which is neither one of "
                        "its slots nor held in a plain __dict__"
                    )


def _plain_dict(getter: Any, cls: type, instance: Any) -> dict[str, Any] | None:
    """The instance's own ``__dict__``, reached through the type's built-in descriptor only."""
    if type(getter) is not types.GetSetDescriptorType:
        return None
    namespace = getter.__get__(instance, cls)
    return namespace if type(namespace) is dict else None


_ARGS = vars(BaseException)["args"]


def _kind_refusal(ref: ClassRef, cls: type, kind: str | None) -> str:
    if kind is None and not is_library_class(cls):
        return (
            f"result refers to {ref.name}, which defines its own __reduce__, __setstate__ or "
            "similar (or has a base other than object), so it is not rebuilt from plain data; "
            f"if its code is safe with data a volunteer chose, pass trusted_types=[{ref.name!r}] "
            "to the executor or call boinc_executor.register_trusted_type()"
        )
    return f"result refers to {ref.name} as a {ref.kind}, but that class is not one"
