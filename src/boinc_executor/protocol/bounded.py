"""A pickle reader whose memory and CPU stay bounded by the size of the payload.

The restricted unpickler in :mod:`.decoding` decides *which* callables a payload
may name; this module decides *how much* they may do. A volunteer's payload can
still ask an allowed callable for far more than its own size (``bytearray`` with
2**31 from a 54-byte payload, ``list(range(10**12))``, ``str`` of a container
whose repr explodes), make the C unpickler size its memo table by an index
(``LONG_BINPUT 2**27`` costs 2 GB), or fill a dict with keys of one hash so that
building it takes quadratic time under the GIL.

:class:`BoundedUnpickler` is the pure-Python unpickler with the opcodes that
allocate or hash replaced by checked versions:

- every call a payload makes through a *guarded* callable (``REDUCE``,
  ``NEWOBJ``, ``INST``/``OBJ``) is charged what it will allocate, and the total
  may not exceed ``ALLOC_FACTOR`` times the payload plus ``ALLOC_SLACK``;
- numpy arrays are charged their size, and an array's state must match its
  shape (numpy reads past a short object list: a segfault, not an error);
- no dict or set may receive more than ``MAX_EQUAL_HASHES`` keys of one hash,
  so building any container is linear in its size.

It is about ten times slower than the C unpickler, so :func:`fast_path_ok` and
:func:`needs_bounds` let the caller use the C unpickler where none of this can
happen: a payload whose opcodes it may read (no ``PUT`` that could size the
memo, no hashing into a dict or set beyond ``FAST_PATH_BYTES``), that names no
guarded callable.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import sys
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ..errors import ResultDecodeError, UnsafeResultError

__all__ = [
    "ALLOC_FACTOR",
    "ALLOC_SLACK",
    "FAST_PATH_BYTES",
    "MAX_EQUAL_HASHES",
    "BoundedUnpickler",
    "fast_path_ok",
    "needs_bounds",
]

FAST_PATH_BYTES = 4096  # worst hash flood the C unpickler can meet in this size: ~2 ms
ALLOC_FACTOR = 16  # bytes a payload byte may cost (8-byte pointers for 2-byte memo refs)
ALLOC_SLACK = 1 << 20
MAX_EQUAL_HASHES = 64  # keys of one hash in one container; random 64-bit hashes never get near
_POINTER = 8
_HASH_MODULUS = sys.hash_info.modulus
_MAX_STR_INT_BITS = 16_384  # str() of a larger int is quadratic where the digit limit is off

# Callables whose cost depends on their arguments; the C unpickler cannot check
# them, so a payload naming one is read by BoundedUnpickler.
_CONTAINERS: tuple[type, ...] = (list, tuple, set, frozenset, dict, deque, Counter, OrderedDict)
_KEYED: tuple[type, ...] = (set, frozenset, dict, Counter, OrderedDict, defaultdict)
_GUARDED: frozenset[tuple[str, str]] = frozenset(
    {("builtins", t.__name__) for t in (bytearray, bytes, str, list, tuple, set, frozenset, dict)}
    | {("collections", t.__name__) for t in (deque, Counter, OrderedDict, defaultdict)}
    | {("copyreg", "_reconstructor")}
    | {
        (f"{package}.multiarray", "_reconstruct")
        for package in ("numpy.core", "numpy._core")  # numpy 1.x and 2.x
    }
)
# Keys whose hashes a volunteer cannot make collide: str and bytes hashes are
# randomised per process; ints below the modulus hash to themselves.
_UNCOLLIDABLE: frozenset[type] = frozenset({str, bytes, float, bool, type(None)})
# The opcodes the C unpickler may read, by how their argument is laid out. Left
# out, so that the bounded reader takes the payload: what the C unpickler trusts
# too far (a PUT or LONG_BINPUT index sizes its memo table; an 8-byte length is
# allocated before the data is read, and a truncated BYTEARRAY8 makes it free a
# bytearray that still has a view), and what no result needs (EXT codes,
# persistent IDs, out-of-band buffers).
_NO_ARGUMENT = b"(012NRbaelot})]\x81\x85\x86\x87\x88\x89\x8f\x92\x93\x94"
_KEYED_OPCODES = b"dsu\x90\x91"  # they hash keys into a dict or set
# Possessive repeats (Python 3.11+) keep the regex engine from stacking a
# backtracking point per opcode: twice as fast, same matches.
_POSSESSIVE = b"+" if sys.version_info >= (3, 11) else b""
_FIXED_RUN = re.compile(
    b"(?:[" + re.escape(_NO_ARGUMENT) + b"]+" + _POSSESSIVE
    + b"|[Jj]....|[Khq\x80].|M..|[G\x95].{8})*" + _POSSESSIVE,
    re.DOTALL,
)  # fmt: skip
# The opcodes the C unpickler trusts too far, as bytes: a small payload with none
# of these bytes anywhere, even in its data, needs no scan.
_C_UNSAFE_BYTES = re.compile(
    b"["
    + re.escape(
        pickle.PUT + pickle.LONG_BINPUT + pickle.BINBYTES8 + pickle.BINUNICODE8 + pickle.BYTEARRAY8
    )
    + b"]"
)
_COUNTED = {  # opcode -> width of the little-endian length that precedes its data
    pickle.SHORT_BINUNICODE[0]: 1,
    pickle.SHORT_BINBYTES[0]: 1,
    pickle.SHORT_BINSTRING[0]: 1,
    pickle.LONG1[0]: 1,
    pickle.BINUNICODE[0]: 4,
    pickle.BINBYTES[0]: 4,
    pickle.BINSTRING[0]: 4,
    pickle.LONG4[0]: 4,
}
_TEXT_LINES = {op[0]: 1 for op in (b"I", b"L", b"F", b"S", b"V", b"g")} | {
    pickle.GLOBAL[0]: 2,
    pickle.INST[0]: 2,
}
_STOP = pickle.STOP[0]


def fast_path_ok(data: bytes) -> bool:
    """Whether the C unpickler may read ``data`` (it must still refuse guarded names).

    A small payload in which no byte is one of the opcodes the C unpickler
    trusts too far passes at once. Others are scanned, opcode by opcode up to
    STOP, mostly in the regex engine: runs of fixed-width opcodes in one match,
    a step of Python only per counted string or text opcode. What the C
    unpickler cannot be trusted with sends the payload to the bounded reader:
    an opcode left out above, a length that runs past the payload, and, in
    payloads over ``FAST_PATH_BYTES``, any opcode that fills a dict or set (a
    hash flood) or parses a decimal text (quadratic on Pythons without a digit
    limit). Data bytes that only look like an unsafe opcode (a chunk of ints
    holds some) no longer send a payload to the reader ten times slower.
    """
    small = len(data) <= FAST_PATH_BYTES
    if small and _C_UNSAFE_BYTES.search(data) is None:
        return True
    run = _FIXED_RUN.match
    end = len(data)
    pos = 0
    while True:
        pos = run(data, pos).end()  # type: ignore[union-attr]  # the pattern matches empty
        if pos >= end:
            return False  # no STOP: malformed, and the bounded reader says how
        op = data[pos]
        if op == _STOP:
            return True
        width = _COUNTED.get(op)
        if width is not None:
            start = pos + 1 + width
            size = int.from_bytes(data[pos + 1 : start], "little", signed=width == 4)
            pos = start + size
            if size < 0 or pos > end:
                return False
        elif op in _KEYED_OPCODES and small:
            pos += 1
        elif op in _TEXT_LINES and small:
            for _ in range(_TEXT_LINES[op]):
                pos = data.find(b"\n", pos + 1)
                if pos < 0:
                    return False
            pos += 1
        else:
            return False


def needs_bounds(module: str, name: str) -> bool:
    """Whether a payload naming ``module.name`` must be read by :class:`BoundedUnpickler`."""
    return (module, name) in _GUARDED


def _length(value: Any) -> int:
    """How many items ``value`` yields, refusing what cannot say in advance."""
    try:
        return len(value)
    except (TypeError, OverflowError):
        raise ResultDecodeError(
            f"result payload passes a {type(value).__name__} of unknown or huge length "
            "to a constructor; refused"
        ) from None


def _str_cost(args: tuple[Any, ...]) -> int:
    """What ``str(*args)`` allocates; refuses a repr of a container (it can explode)."""
    if not args:
        return 0
    obj = args[0]
    if len(args) > 1:  # str(bytes, encoding[, errors])
        return 4 * _length(obj)
    if isinstance(obj, str):
        return len(obj)
    if obj is None or isinstance(obj, (bool, float, complex)):
        return 64
    if isinstance(obj, int) and obj.bit_length() <= _MAX_STR_INT_BITS:
        return obj.bit_length() // 3 + 2
    raise ResultDecodeError(
        f"result payload calls str() on a {type(obj).__name__}; only text and numbers are allowed"
    )


def _numpy_nbytes(shape: Any, dtype: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, checking both are plain."""
    import numpy

    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims
    ):
        raise ResultDecodeError("result payload holds a numpy array with a malformed shape")
    return int(math.prod(dims)) * int(numpy.dtype(dtype).itemsize)


class BoundedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with every allocation and every key insertion checked.

    It resolves globals as ``pickle._Unpickler`` does: a subclass adds the type
    policy (``decoding._BoundedRestricted``), so both readers agree on types.

    Args:
        data: the payload.
    """

    # Attributes the pure-Python unpickler sets up; typeshed does not declare them.
    stack: list[Any]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    pop_mark: Callable[[], list[Any]]
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self._budget = ALLOC_SLACK + ALLOC_FACTOR * len(data)
        self._hashes: dict[int, dict[int, int]] = {}  # id(container) -> hash -> keys

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeResultError("result uses persistent IDs, which are never allowed")

    # ------------------------------------------------------------------ allocation budget

    def _charge(self, nbytes: int, what: str) -> None:
        self._budget -= nbytes
        if self._budget < 0:
            raise ResultDecodeError(
                f"result payload asks {what} for {nbytes} bytes, more than a record of its "
                f"size may ({ALLOC_FACTOR} bytes per payload byte); refused"
            )

    def _check_call(self, func: Any, args: Any, kwargs: Any) -> None:
        """Charge a guarded callable's allocation, and check the keys it will hash."""
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            return  # the call itself fails with a TypeError
        what = getattr(func, "__qualname__", type(func).__name__)
        if func is bytearray or func is bytes:
            size = args[0] if args else 0
            cost = size if isinstance(size, int) else _length(size)
            self._charge(max(cost, 0), what)
        elif func is str:
            self._charge(_str_cost(args), what)
        elif func in _CONTAINERS or func is defaultdict:
            source = args[1:2] if func is defaultdict else args[:1]
            items = source[0] if source else ()
            self._charge(_POINTER * (_length(items) + len(kwargs)), what)
            if func in _KEYED:
                pairs = func not in (set, frozenset, Counter)
                self._check_keys(None, _keys_of(items, pairs=pairs))
        elif (getattr(func, "__module__", None), what) not in _GUARDED:
            return
        elif what == "_reconstructor":  # copyreg's: base.__new__(cls, state)
            if len(args) == 3 and args[1] is not object:
                self._check_call(args[1], (args[2],), {})
        elif len(args) == 3:  # numpy's _reconstruct(subtype, shape, dtype)
            self._charge(_numpy_nbytes(args[1], args[2]), "numpy")

    def _check_keys(self, container: object | None, keys: Iterable[Any]) -> dict[int, int]:
        """Refuse a container that would hold more than MAX_EQUAL_HASHES keys of one hash.

        Checked *before* the keys go in, since inserting them is the quadratic part.

        Returns:
            The container's per-hash key counts (a fresh table for ``None``).
        """
        counts = {} if container is None else self._hashes.setdefault(id(container), {})
        for key in keys:
            kind = type(key)
            if kind in _UNCOLLIDABLE or (kind is int and -_HASH_MODULUS < key < _HASH_MODULUS):
                continue
            digest = hash(key)
            seen = counts.get(digest, 0) + 1
            if seen > MAX_EQUAL_HASHES:
                raise ResultDecodeError(
                    f"result payload fills a dict or set with more than {MAX_EQUAL_HASHES} "
                    f"keys of equal hash (a hash-flooding attack); refused"
                )
            counts[digest] = seen
        return counts

    # ------------------------------------------------------------------ checked opcodes

    def _load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._check_call(func, args, {})
        stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args, {})
        self.append(cls.__new__(cls, *args))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args, kwargs)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        self._check_call(klass, tuple(args), {})
        super()._instantiate(klass, args)  # type: ignore[misc]

    def _load_build(self) -> None:
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(self.stack[-2], numpy.ndarray):
            self._check_array_state(numpy, self.stack[-1])
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    def _check_array_state(self, numpy: Any, state: Any) -> None:
        """Refuse an array state whose data does not fill its shape exactly."""
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise ResultDecodeError("result payload holds a malformed numpy array state")
        shape, dtype, data = state[-4], state[-3], state[-1]
        if not isinstance(dtype, numpy.dtype):
            raise ResultDecodeError("result payload holds a numpy array without a dtype")
        nbytes = _numpy_nbytes(shape, dtype)
        self._charge(nbytes, "numpy")
        if dtype.hasobject:
            if dtype != numpy.dtype(object) or not isinstance(data, list):
                raise ResultDecodeError("result payload holds an unsupported object array")
            if len(data) * dtype.itemsize != nbytes:
                raise ResultDecodeError("result payload holds an object array of the wrong size")
        elif not isinstance(data, (bytes, bytearray)) or len(data) != nbytes:
            raise ResultDecodeError("result payload holds a numpy array of the wrong size")

    def _load_bytearray8(self) -> None:
        # The pure-Python reader zero-fills bytearray(length) before reading: a
        # 17-byte payload could make it touch 2**60 bytes. Read first, then copy.
        (length,) = struct.unpack("<Q", self.read(8))
        data = self.read(length)
        if len(data) != length:
            raise ResultDecodeError("result payload is truncated inside a bytearray")
        self.append(bytearray(data))

    def _load_dict(self) -> None:
        items = self.pop_mark()
        counts = self._check_keys(None, items[0::2])
        result = {items[i]: items[i + 1] for i in range(0, len(items), 2)}
        if counts:
            self._hashes[id(result)] = counts  # later SETITEMS on it count on
        self.append(result)

    def _load_setitem(self) -> None:
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self._check_keys(stack[-1], (key,))
        stack[-1][key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self._check_keys(target, items[0::2])
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self._check_keys(target, items)
        if isinstance(target, set):
            target.update(items)
        else:
            for item in items:
                target.add(item)

    def _load_frozenset(self) -> None:
        items = self.pop_mark()
        self._check_keys(None, items)
        self.append(frozenset(items))

    for _opcode, _method in (
        (pickle.REDUCE, _load_reduce),
        (pickle.NEWOBJ, _load_newobj),
        (pickle.NEWOBJ_EX, _load_newobj_ex),
        (pickle.BUILD, _load_build),
        (pickle.DICT, _load_dict),
        (pickle.SETITEM, _load_setitem),
        (pickle.SETITEMS, _load_setitems),
        (pickle.ADDITEMS, _load_additems),
        (pickle.FROZENSET, _load_frozenset),
        (pickle.BYTEARRAY8, _load_bytearray8),
    ):
        dispatch[_opcode[0]] = _method
    del _opcode, _method


def _keys_of(items: Any, *, pairs: bool) -> Iterable[Any]:
    """The keys a dict-like (``pairs``) or set-like constructor will hash from ``items``."""
    if isinstance(items, dict):
        return items.keys()
    if isinstance(items, (str, bytes, bytearray)):
        return ()  # characters and small ints: they cannot collide
    if pairs:
        return (item[0] for item in items if isinstance(item, (tuple, list)) and item)
    keys: Iterable[Any] = items
    return keys
