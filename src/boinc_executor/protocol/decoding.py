"""Safe decoding of result payloads that come back from untrusted volunteers.

A pickle can make the reader call any importable callable with any arguments
(``os.system`` through ``__reduce__``). Results are therefore read with a
restricted unpickler: every global a payload names is checked against an
allow-list before it is resolved. The default list holds plain data types and
stdlib value types whose constructors are harmless with arbitrary arguments;
numpy arrays are added when numpy is importable. Users widen the list with
:func:`register_trusted_type` (process-wide) or per executor, and may switch the
check off with ``trust_results=True`` on a closed network.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import threading
from collections.abc import Iterable
from typing import Any

from ..errors import ResultDecodeError, UnsafeResultError

__all__ = ["TypePolicy", "register_trusted_type", "safe_loads"]

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
    with data chosen by a volunteer: the decoder will call them.

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

    def allows(self, module: str, name: str) -> bool:
        """Whether a payload may resolve ``module.name``."""
        if (module, name) in self._allowed:
            return True
        with _registry_lock:
            return (module, name) in _registered


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, policy: TypePolicy) -> None:
        super().__init__(io.BytesIO(data))
        self._policy = policy

    def find_class(self, module: str, name: str) -> Any:
        if not self._policy.allows(module, name):
            raise UnsafeResultError(
                f"result refers to {module}.{name}, which is not an allowed result type; "
                "if you trust it, pass trusted_types=[...] to the executor or call "
                "boinc_executor.register_trusted_type()"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeResultError("result uses persistent IDs, which are never allowed")


def safe_loads(data: bytes, policy: TypePolicy) -> Any:
    """Decode a pickle payload under ``policy``.

    Raises:
        UnsafeResultError: the payload names a type that is not allowed.
        ResultDecodeError: the payload is malformed (truncated, garbage, too deep).
    """
    try:
        if policy.trust_all:
            return pickle.loads(data)
        return _RestrictedUnpickler(data, policy).load()
    except UnsafeResultError:
        raise
    except (Exception, RecursionError) as exc:
        raise ResultDecodeError(f"result payload is corrupt: {type(exc).__name__}: {exc}") from exc
