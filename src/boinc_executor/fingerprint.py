"""Replay fingerprints: a digest of everything a call's result depends on that the master controls.

Design note. A replayed call is matched to its journal line by index and by this
digest, so the digest must change whenever the result could, and must not change
between two runs of the same unchanged script. Hashing the pickle does neither
well: cloudpickle output carries memo order, set iteration order (which depends on
``PYTHONHASHSEED``), dict insertion order and, for by-reference functions, only a
name. So the digest is taken over a *canonical traversal* instead:

* plain data (``None``, ``bool``, numbers, ``str``, ``bytes``) by type and value;
  lists and tuples in order; dicts and sets as the *sorted* digests of their items,
  so their construction order does not matter;
* a function by its qualified name, its code (bytecode, constants, names, nested
  code objects; not file names or line numbers, so moving code does not
  invalidate a batch), its defaults and keyword defaults, its closure cells, and
  every global its code (or nested code) reads, each digested in turn;
* ``functools.partial`` by its function, arguments and keywords; a bound method by
  its function and ``self``; a module by name; a class by qualified name, plus its
  attributes when it is defined in ``__main__`` (where cloudpickle ships it by value);
* any other object the way pickle would rebuild it: its ``__reduce_ex__`` parts
  (callable, arguments, state, items), which covers dataclasses, enums, slotted
  objects and extension types such as arrays.

A shared object is digested once (its digest is cached by identity); a cycle is
written as its distance up the path, so no digest depends on traversal order.

Limits: module state that cannot be pickled (a lock, an open file) enters by
its type only. Objects whose ``__reduce_ex__`` depends on process state (an address, a
random salt) digest differently in each run and so never replay; such arguments
make a re-run raise ``BatchMismatchError`` rather than return stale results. A
function called by name from an installed module is digested by its own code and
globals, not by the code of everything it calls in turn (a changed library
dependency is the library's version, outside the batch). Values reached only
through ``getattr`` at run time, files the function reads, and the environment of
the volunteer are outside the master's control and outside the digest.
"""

from __future__ import annotations

import functools
import hashlib
import marshal
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["call_digest", "function_digest", "split_digest"]

_MAX_DEPTH = 200  # deeper structures are digested through their pickle
_NO_REF = 1 << 30  # "refers to no ancestor": the digest may be cached by identity


_SHORT = 64  # encodings up to this long stand for themselves; longer ones by their hash


def _leaf(tag: bytes, data: bytes = b"") -> bytes:
    """A self-delimiting encoding of one part: short ones verbatim, long ones hashed.

    Hashing only what is long keeps small calls cheap (one SHA-256 per job
    rather than one per item), and equal content always encodes equally.
    """
    encoded = tag + struct.pack("<I", len(data)) + data
    if len(encoded) <= _SHORT:
        return encoded
    return b"h" + hashlib.sha256(encoded).digest()


class _Digest:
    """One canonical traversal.

    Every value gets an encoding of its own (see :func:`_leaf`). A reference back to an object
    still being digested (a cycle) is written as its distance up the path, so the
    result never depends on memo order; digests of finished objects that refer to
    no ancestor are cached by identity, so shared sub-structures cost once.
    """

    def __init__(self) -> None:
        self._path: dict[int, int] = {}  # id -> depth of the objects being digested
        self._cache: dict[int, bytes] = {}
        self._keep: list[Any] = []  # keeps cached objects alive so their ids stay unique

    def digest(self, value: Any) -> bytes:
        """The canonical digest of ``value``."""
        return self._digest(value, 0)[0]

    def _digest(self, value: Any, depth: int) -> tuple[bytes, int]:
        """(digest, shallowest ancestor depth it refers to, or ``_NO_REF``)."""
        kind = type(value)
        if value is None or kind is bool:
            return _leaf(b"c", repr(value).encode()), _NO_REF
        if kind is int:
            return _leaf(b"i", str(value).encode()), _NO_REF
        if kind is float or kind is complex:
            return _leaf(b"f", repr(value).encode()), _NO_REF
        if kind is str:
            return _leaf(b"s", value.encode("utf-8", "surrogatepass")), _NO_REF
        if kind is bytes:
            return _leaf(b"b", value), _NO_REF
        key = id(value)
        cached = self._cache.get(key)
        if cached is not None:
            return cached, _NO_REF
        above = self._path.get(key)
        if above is not None:
            return _leaf(b"r", str(depth - above).encode()), above
        if depth > _MAX_DEPTH:
            return _leaf(b"p", _pickled(value)), _NO_REF
        self._path[key] = depth
        try:
            parts: list[bytes] = []
            low = _NO_REF

            def add(item: Any) -> bytes:
                nonlocal low
                d, ref = self._digest(item, depth + 1)
                low = min(low, ref)
                return d

            tag = self._parts(value, kind, add, parts)
        finally:
            del self._path[key]
        result = _leaf(tag, b"".join(parts))
        if low >= depth:
            self._cache[key] = result
            self._keep.append(value)
        return result, low

    def _parts(
        self, value: Any, kind: type, add: Callable[[Any], bytes], parts: list[bytes]
    ) -> bytes:
        """Append the digests of ``value``'s parts to ``parts``; return its tag."""
        if kind is tuple or kind is list:
            parts.extend(add(item) for item in value)
            return b"t" if kind is tuple else b"l"
        if kind is dict:
            parts.extend(sorted(_leaf(b"I", add(k) + add(v)) for k, v in value.items()))
            return b"d"
        if kind is set or kind is frozenset:
            parts.extend(sorted(add(item) for item in value))
            return b"S"
        if kind is bytearray:
            parts.append(_leaf(b"x", bytes(value)))
            return b"B"
        if kind is types.FunctionType:
            self._function(value, add, parts)
            return b"n"
        if kind is types.MethodType:
            parts += [add(value.__func__), add(value.__self__)]
            return b"M"
        if kind is functools.partial:
            parts += [add(value.func), add(value.args), add(value.keywords)]
            return b"P"
        if kind is types.ModuleType:
            parts.append(_leaf(b"x", value.__name__.encode()))
            return b"m"
        if kind is types.CodeType:
            _code(value, add, parts)
            return b"k"
        if kind is types.CellType:
            try:
                parts.append(add(value.cell_contents))
            except ValueError:
                return b"e"  # an empty cell: the variable was never bound
            return b"C"
        if isinstance(value, type):
            parts.append(_leaf(b"x", _qualified(value).encode()))
            if value.__module__ == "__main__":  # shipped by value, so its body counts
                skip = ("__dict__", "__weakref__", "__module__", "__doc__")
                parts.append(add({k: v for k, v in vars(value).items() if k not in skip}))
            return b"T"
        if kind in (types.BuiltinFunctionType, types.BuiltinMethodType):
            parts.append(_leaf(b"x", _qualified(value).encode()))
            owner = getattr(value, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType):
                parts.append(add(owner))
            return b"F"
        _reduced(value, add, parts)
        return b"o"

    def _function(
        self, fn: types.FunctionType, add: Callable[[Any], bytes], parts: list[bytes]
    ) -> None:
        parts.append(_leaf(b"x", _qualified(fn).encode()))
        _code(fn.__code__, add, parts)
        parts += [add(fn.__defaults__), add(fn.__kwdefaults__), add(tuple(fn.__closure__ or ()))]
        found = fn.__globals__
        builtins = found.get("__builtins__")
        for name in sorted(_global_names(fn.__code__)):
            if name in found:
                parts += [_leaf(b"g", name.encode()), add(found[name])]
            elif isinstance(builtins, dict) and name in builtins:
                parts.append(_leaf(b"x", b"G" + name.encode()))
            # else: an attribute name, or a global not defined (yet)


def _code(code: types.CodeType, add: Callable[[Any], bytes], parts: list[bytes]) -> None:
    parts.append(_leaf(b"x", code.co_code))
    parts.append(
        _leaf(b"x", b"%d/%d/%d" % (code.co_argcount, code.co_kwonlyargcount, code.co_flags))
    )
    parts.append(add((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)))
    parts.extend(add(const) for const in code.co_consts)


def _reduced(value: Any, add: Callable[[Any], bytes], parts: list[bytes]) -> None:
    """Digest an object as pickle would rebuild it (its ``__reduce_ex__`` parts)."""
    parts.append(_leaf(b"x", _qualified(type(value)).encode()))
    try:
        reduced = value.__reduce_ex__(4)
    except Exception:
        parts.append(_leaf(b"x", _pickled(value)))
        return
    if isinstance(reduced, str):
        parts.append(_leaf(b"x", b"R" + reduced.encode()))  # a global, pickled by name
        return
    rebuild, *rest = reduced
    parts.append(_leaf(b"x", _qualified(rebuild).encode()))  # pickled by reference
    for i, part in enumerate(rest[:4]):
        parts.append(add(list(part) if i >= 2 and part is not None else part))


def _pickled(value: Any) -> bytes:
    """The pickle of an object with no usable ``__reduce_ex__``; its type if it has none.

    Something that cannot be pickled at all never travels: an argument or a
    by-value function holding it fails to pickle before it is fingerprinted, so
    what reaches here is state of an imported module (a lock, an open file) that
    the volunteer builds from its own copy of the module.
    """
    import cloudpickle

    try:
        return bytes(cloudpickle.dumps(value, protocol=5))
    except Exception:
        return b"unpicklable " + _qualified(type(value)).encode()


def _qualified(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _global_names(code: types.CodeType) -> set[str]:
    """Names the code and its nested code objects look up (globals among them)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def function_digest(fn: Callable[..., Any]) -> str:
    """A digest of a callable and everything cloudpickle would capture with it."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}".encode()
    return hashlib.sha256(version + _Digest().digest(fn)).hexdigest()[:32]


_PLAIN_DEPTH = 32  # deeper (or cyclic) plain data takes the general traversal


def _plain(value: Any, depth: int) -> bytes | None:
    """The digest of plain data, or None if ``value`` holds anything else.

    Most arguments are numbers, strings and containers of them. For those this
    gives exactly the encoding :class:`_Digest` gives, without its bookkeeping for
    shared objects and cycles (plain data shared or nested encodes the same; a
    cycle runs into the depth limit and falls back), at a fraction of the cost.
    """
    kind = type(value)
    if kind is int:
        return _leaf(b"i", str(value).encode())
    if kind is str:
        return _leaf(b"s", value.encode("utf-8", "surrogatepass"))
    if kind is float or kind is complex:
        return _leaf(b"f", repr(value).encode())
    if value is None or kind is bool:
        return _leaf(b"c", repr(value).encode())
    if kind is bytes:
        return _leaf(b"b", value)
    if depth > _PLAIN_DEPTH:
        return None
    if kind is tuple or kind is list or kind is set or kind is frozenset:
        parts = []
        for item in value:
            part = _plain(item, depth + 1)
            if part is None:
                return None
            parts.append(part)
        if kind is tuple or kind is list:
            return _leaf(b"t" if kind is tuple else b"l", b"".join(parts))
        return _leaf(b"S", b"".join(sorted(parts)))
    if kind is dict:
        items = []
        for k, v in value.items():
            dk, dv = _plain(k, depth + 1), _plain(v, depth + 1)
            if dk is None or dv is None:
                return None
            items.append(_leaf(b"I", dk + dv))
        return _leaf(b"d", b"".join(sorted(items)))
    if kind is bytearray:
        return _leaf(b"B", _leaf(b"x", bytes(value)))
    return None


_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _flat(calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> bytes | None:
    """The digest input of calls with no keywords whose arguments are scalars, or
    tuples or lists of scalars (what ``map`` is mostly given); None for others.

    Checking exact types is a few cheap tests per argument; then ``marshal``
    encodes the lot at C speed. Format 0 is canonical for these types: no
    interning flags or back-references (which depend on the interpreter's
    state), floats as their shortest exact text, and no dicts or sets (whose
    order would count). The ``M`` prefix keeps it apart from :class:`_Digest`'s
    encodings, which start with a type tag or ``h``.
    """
    scalars = _SCALARS
    for args, kwargs in calls:
        if kwargs:
            return None
        for arg in args:
            kind = type(arg)
            if kind not in scalars and not (
                (kind is tuple or kind is list) and all(type(a) in scalars for a in arg)
            ):
                return None
    return b"M" + marshal.dumps([args for args, _ in calls], 0)


def call_digest(
    fn_digest: str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> tuple[str, bool]:
    """The journal digest of a job, ``<function digest>:<arguments digest>``, and
    whether the arguments are plain data (so the standard pickle ships them as is).

    Keeping the two halves apart lets a mismatch say which of them changed.
    Three ways, fastest first, each chosen by the data alone (so two runs of a
    script always take the same one): :func:`_flat`, :func:`_plain`, and the
    general traversal.
    """
    digest = _flat(calls)
    if digest is None:
        digest = _plain(calls, 0)
    plain = digest is not None
    if digest is None:
        digest = _Digest().digest(calls)
    return f"{fn_digest}:{hashlib.sha256(digest).hexdigest()}", plain


def split_digest(digest: str) -> tuple[str, str]:
    """The (function, arguments) halves of a journal digest; ``("", digest)`` for old ones."""
    fn, sep, args = digest.partition(":")
    return (fn, args) if sep else ("", digest)
