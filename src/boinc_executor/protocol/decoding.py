"""Safe decoding of result payloads that come back from untrusted volunteers.

A pickle can make the reader call any importable callable with any arguments
(``os.system`` through ``__reduce__``). Results are therefore read with a
restricted unpickler: every global a payload names is checked against an
allow-list before it is resolved. The default list holds plain data types and
stdlib value types whose constructors are harmless with arbitrary arguments;
numpy arrays are added when numpy is importable. Users widen the list with
:func:`register_trusted_type` (process-wide) or per executor, and may switch the
check off with ``trust_results=True`` on a closed network.

The script's own classes never pass through that allow-list: the runner sends them
as class references (:mod:`.classref`), which this unpickler turns into inert
placeholders and, once the stream is read, into instances of classes resolved from
the batch's trusted set (:meth:`TypePolicy.resolve_class`).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import pickle
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import ResultDecodeError, UnsafeResultError
from . import bounded, classref

__all__ = ["TypePolicy", "decode_exception", "register_trusted_type", "safe_loads"]

# (module, qualified name) pairs a payload may name. Each is a type or function
# that is safe to call with arbitrary plain-data arguments.
_BASE_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", name)
        for name in (
            "bool",
            "bytearray",
            "bytes",
            "complex",
            "dict",
            "float",
            "frozenset",
            "int",
            "list",
            "range",
            "set",
            "slice",
            "str",
            "tuple",
            "object",
        )
    }
    | {
        ("copyreg", "_reconstructor"),
        ("collections", "OrderedDict"),
        ("collections", "deque"),
        ("collections", "Counter"),
        ("collections", "defaultdict"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
        ("uuid", "SafeUUID"),
        ("ipaddress", "IPv4Address"),
        ("ipaddress", "IPv6Address"),
        ("ipaddress", "IPv4Network"),
        ("ipaddress", "IPv6Network"),
    }
    | {
        (module, name)
        for module in ("pathlib", "pathlib._local")  # Python 3.13 pickles them from _local
        for name in ("PurePath", "PurePosixPath", "PureWindowsPath", "PosixPath", "WindowsPath")
    }
)

_NUMPY_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (f"{package}.{module}", name)
        for package in ("numpy.core", "numpy._core")  # numpy 1.x and 2.x
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    }
    | {("numpy", "ndarray"), ("numpy", "dtype")}
)

_registry_lock = threading.Lock()
_registered: set[tuple[str, str]] = set()


def _key(item: type | str) -> tuple[str, str]:
    if isinstance(item, str):
        module, sep, name = item.rpartition(".")
        if not sep or not module or not name:
            raise ValueError(f"trusted type {item!r} must be given as 'module.QualName'")
        return module, name
    if isinstance(item, type):
        return item.__module__, item.__qualname__
    raise TypeError(f"trusted types are classes or 'module.QualName' strings, not {item!r}")


def register_trusted_type(*types: type | str) -> None:
    """Allow these types in every executor's result payloads, process-wide.

    Only register types whose constructor and ``__setstate__`` are safe to call
    with data chosen by a volunteer: the decoder will call them. Dataclasses,
    enums, namedtuples, exceptions and plain classes are rebuilt without calling
    any of their code (see ``docs/user-guide.md``); registering one only widens
    which modules such classes may come from.

    Args:
        *types: classes, or ``"module.QualName"`` strings.
    """
    keys = [_key(t) for t in types]
    with _registry_lock:
        _registered.update(keys)


class TypePolicy:
    """Which globals a result payload may name.

    Args:
        extra: more trusted types (classes or ``"module.QualName"`` strings),
            on top of the defaults and the process-wide registrations.
        trust_all: skip the check entirely (``pickle.loads``). Only for networks
            where every volunteer is trusted.
    """

    def __init__(self, extra: Iterable[type | str] = (), *, trust_all: bool = False) -> None:
        self.trust_all = trust_all
        allowed = set(_BASE_ALLOWED)
        if importlib.util.find_spec("numpy") is not None:
            allowed |= _NUMPY_ALLOWED
        allowed.update(_key(t) for t in extra)
        self._allowed = frozenset(allowed)
        self._shipped_lock = threading.Lock()
        self._shipped_modules: set[str] = set()
        self._shipped_classes: dict[tuple[str, str], type] = {}

    def allows(self, module: str, name: str) -> bool:
        """Whether a payload may resolve ``module.name``."""
        if (module, name) in self._allowed:
            return True
        with _registry_lock:
            return (module, name) in _registered

    # -- the script's classes (class references, see .classref)

    def ship(self, module: str, classes: Iterable[type] = ()) -> None:
        """Trust the classes a program file carries: its function's module, and ``classes``.

        Called on the master when a function is pickled. ``classes`` are the ones
        cloudpickle shipped by value (defined in ``__main__``, possibly inside a
        function); the module's own classes are found by name when a result names one.
        """
        with self._shipped_lock:
            if not classref.is_library_module(module):
                self._shipped_modules.add(module)
            for cls in classes:
                self._shipped_classes[(cls.__module__, cls.__qualname__)] = cls

    def resolve_class(self, module: str, qualname: str) -> type:
        """The class a class reference in a result names, if the batch trusts it.

        Trusted are: classes defined in ``__main__`` or in a shipped function's
        module (looked up in the already imported module, never importing one),
        classes the program files carried by value, ``trusted_types`` and
        :func:`register_trusted_type`.

        Raises:
            UnsafeResultError: the class is not in the trusted set; the message says
                how to trust it.
        """
        with self._shipped_lock:
            cls = self._shipped_classes.get((module, qualname)) or self._by_bare_name(
                module, qualname
            )
            shipped = module == "__main__" or module in self._shipped_modules
        if cls is None and shipped:
            cls = _defined_in(module, qualname)
        if cls is None and self.allows(module, qualname):
            cls = _import_class(module, qualname)
        if cls is None:
            raise UnsafeResultError(
                f"result refers to {module}.{qualname}, which is not a class of this batch's "
                "script or function module, nor a trusted type; if you trust it, pass "
                f"trusted_types=[{module + '.' + qualname!r}] to the executor or call "
                "boinc_executor.register_trusted_type()"
            )
        return cls

    def _by_bare_name(self, module: str, name: str) -> type | None:
        """A shipped class by its ``__name__`` alone, when that is unambiguous.

        cloudpickle rebuilds a class sent by value with ``__qualname__`` equal to its
        ``__name__``, so a class defined inside a function comes back named ``Local``
        rather than ``f.<locals>.Local``. Called with the lock held.
        """
        if "." in name:
            return None
        found = {
            cls
            for (mod, _), cls in self._shipped_classes.items()
            if mod == module and cls.__name__ == name
        }
        return found.pop() if len(found) == 1 else None


def _defined_in(module: str, qualname: str) -> type | None:
    """A class defined in an imported module, found through namespaces only (no code runs)."""
    found = sys.modules.get(module)
    if found is None:
        return None
    namespace: Mapping[str, Any] = vars(found)
    target: type | None = None
    for part in qualname.split("."):
        found_here = namespace.get(part)
        if not isinstance(found_here, type):
            return None
        target = found_here
        namespace = vars(target)
    if target is not None and (target.__module__, target.__qualname__) == (module, qualname):
        return target
    return None


def _import_class(module: str, qualname: str) -> type | None:
    """An explicitly trusted class: importing its module is what trusting it allows."""
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    return target if isinstance(target, type) else None


class _ClassRefs:
    """The class-reference entries of an unpickler (see :mod:`.classref`).

    The two wire-format names resolve to functions that only record inert
    placeholders; :meth:`rebuild` then resolves and builds them once the stream is read.
    """

    refs: list[classref.ClassRef]

    def class_ref_entry(self, module: str, name: str) -> Callable[..., Any] | None:
        """This unpickler's own function for a wire-format name, or None for any other name."""
        if module != classref.__name__:
            return None
        if name == "classref_new":
            return self._new_ref
        if name == "classref_fill":
            return classref.classref_fill
        return None

    def _new_ref(self, kind: Any, module: Any, qualname: Any, data: Any) -> Any:
        ref = classref.ClassRef(kind, module, qualname, data)
        if ref.kind == classref.KIND_CLASS and self.explicitly_trusted(ref.module, ref.qualname):
            # Pickle's own protocol may call it (REDUCE, NEWOBJ): explicit trust allows that.
            return _import_class(ref.module, ref.qualname) or ref
        self.refs.append(ref)
        return ref

    def explicitly_trusted(self, module: str, qualname: str) -> bool:
        """Whether pickle's own protocol may use this class (overridden per unpickler)."""
        return False

    def rebuild(self, value: Any, resolve: classref.Resolve) -> Any:
        """``value`` with its class references built (a no-op when it has none)."""
        if not self.refs:
            return value
        return classref.Rebuilder(resolve, self.refs).rebuild(value)

    def refusal(self) -> UnsafeResultError | None:
        """Why a payload failed, when it failed using a class only by reference.

        A class with its own ``__reduce__`` (or a base such as ``dict``) travels by
        pickle's own protocol, which calls the class: only explicit trust allows
        that, so its reference stays an inert placeholder and the load fails.
        """
        for ref in self.refs:
            if ref.kind == classref.KIND_CLASS:
                return UnsafeResultError(
                    f"result needs {ref.name} to run its own pickling code (it defines "
                    "__reduce__ or __setstate__, or has a base other than object); if that "
                    f"code is safe with data a volunteer chose, pass trusted_types=[{ref.name!r}] "
                    "to the executor or call boinc_executor.register_trusted_type()"
                )
        return None


class _PolicyGlobals(_ClassRefs):
    """What both restricted readers resolve: class references, then the type policy."""

    _policy: TypePolicy

    def find_class(self, module: str, name: str) -> Any:
        entry = self.class_ref_entry(module, name)
        if entry is not None:
            return entry
        if module.partition(".")[0] == "cloudpickle":
            raise UnsafeResultError(
                f"result holds a class or function sent by value (cloudpickle's {name}), "
                "which is never accepted: return plain data, or instances of dataclasses, "
                "enums, namedtuples, exceptions or plain classes defined at the top level of "
                "the script or the function's module, or of types in trusted_types=[...]"
            )
        if not self._policy.allows(module, name):
            raise UnsafeResultError(
                f"result refers to {module}.{name}, which is not an allowed result type; "
                f"if you trust it, pass trusted_types=[{module + '.' + name!r}] to the "
                "executor or call boinc_executor.register_trusted_type()"
            )
        return super().find_class(module, name)  # type: ignore[misc]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeResultError("result uses persistent IDs, which are never allowed")

    def explicitly_trusted(self, module: str, qualname: str) -> bool:
        """Classes in ``trusted_types`` or registered: their own pickling code may run."""
        return self._policy.allows(module, qualname)


class _NeedsBounds(Exception):
    """The C reader met a callable only the bounded reader may call: start over there."""


class _RestrictedUnpickler(_PolicyGlobals, pickle.Unpickler):
    """The C unpickler, for small payloads that name no guarded callable (see .bounded)."""

    def __init__(self, data: bytes, policy: TypePolicy) -> None:
        super().__init__(io.BytesIO(data))
        self._policy = policy
        self.refs = []

    def find_class(self, module: str, name: str) -> Any:
        if bounded.needs_bounds(module, name):
            raise _NeedsBounds
        return super().find_class(module, name)


class _BoundedRestricted(_PolicyGlobals, bounded.BoundedUnpickler):
    """The bounded pure-Python reader: memory and hashing work bounded by the payload."""

    def __init__(self, data: bytes, policy: TypePolicy) -> None:
        super().__init__(data)
        self._policy = policy
        self.refs = []


class _TrustingUnpickler(_ClassRefs, pickle.Unpickler):
    """``trust_results=True``: plain unpickling, class references resolved by import."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.refs = []

    def find_class(self, module: str, name: str) -> Any:
        entry = self.class_ref_entry(module, name)
        return entry if entry is not None else super().find_class(module, name)

    def explicitly_trusted(self, module: str, qualname: str) -> bool:
        """Everything is trusted."""
        return True


def _resolve_by_import(module: str, qualname: str) -> type:
    cls = _defined_in(module, qualname) or _import_class(module, qualname)
    if cls is None:
        raise ResultDecodeError(f"result refers to {module}.{qualname}, which is not importable")
    return cls


def safe_loads(data: bytes, policy: TypePolicy) -> Any:
    """Decode a pickle payload under ``policy``, in memory and time bounded by its size.

    Small payloads that name no guarded callable are read by the C unpickler;
    everything else by the bounded pure-Python reader (see :mod:`.bounded`).

    Raises:
        UnsafeResultError: the payload names a type that is not allowed.
        ResultDecodeError: the payload is malformed (truncated, garbage, too deep),
            or asks for more memory or hashing work than its size allows.
    """
    unpickler: _ClassRefs | None = None
    try:
        if policy.trust_all:
            unpickler = trusting = _TrustingUnpickler(data)
            return trusting.rebuild(trusting.load(), _resolve_by_import)
        restricted: _PolicyGlobals
        if bounded.fast_path_ok(data):
            unpickler = restricted = _RestrictedUnpickler(data, policy)
        else:
            unpickler = restricted = _BoundedRestricted(data, policy)
        try:
            value = restricted.load()
        except _NeedsBounds:
            unpickler = restricted = _BoundedRestricted(data, policy)
            value = restricted.load()
    except ResultDecodeError:
        raise
    except (Exception, RecursionError) as exc:
        refusal = unpickler.refusal() if unpickler is not None else None
        if refusal is not None:
            raise refusal from exc
        raise ResultDecodeError(f"result payload is corrupt: {type(exc).__name__}: {exc}") from exc
    try:
        return restricted.rebuild(value, policy.resolve_class)
    except ResultDecodeError:
        raise
    except (Exception, RecursionError) as exc:
        raise ResultDecodeError(f"result payload is corrupt: {type(exc).__name__}: {exc}") from exc


def decode_exception(info: dict[str, Any], policy: TypePolicy) -> dict[str, Any]:
    """A failed call's description, with its exception rebuilt when its class resolves.

    Only this function sets ``"exception"``: whatever the volunteer put under that key
    is dropped. The exception travels as its own pickle (``"instance"``), so a class
    the batch does not trust costs only that call's type (a ``RemoteError``), never
    the whole record.
    """
    info = {k: v for k, v in info.items() if k != "exception"}
    blob = info.get("instance")
    if isinstance(blob, bytes):
        try:
            exc = safe_loads(blob, policy)
        except ResultDecodeError:
            return info
        if isinstance(exc, BaseException):
            info["exception"] = exc
    return info
