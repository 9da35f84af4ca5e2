"""Exceptions and job failures described as plain data, for error records.

A record's error fields are JSON in its header: the exception's type, module,
plain-data args, message and traceback, and the host and Python that ran it.
The master rebuilds an exception from them (``errors.rebuild_exception``)
without unpickling anything a volunteer chose. Standard library only: the
volunteer runner ships this module.
"""

from __future__ import annotations

import functools
import platform
import socket
import traceback
from typing import Any

__all__ = ["PYTHON_VERSION", "error_info", "failure_info", "host_name"]

PYTHON_VERSION = platform.python_version()  # recorded in every record: computed once


def _plain(value: Any, depth: int = 0) -> Any:
    """Reduce exception args to JSON-able plain data; anything else becomes its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and depth < 3:
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return repr(value)[:1000]
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


@functools.cache
def host_name() -> str:
    """This host's name, as recorded in results and error records (looked up once)."""
    return socket.gethostname() or platform.node()


def error_info(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    """Describe an exception as plain data for an error record."""
    cls = type(exc)
    tb = "".join(traceback.format_exception(cls, exc, exc.__traceback__)) if with_traceback else ""
    return {
        "type": cls.__qualname__,
        "module": cls.__module__,
        "args": _plain(exc.args),
        "message": str(exc),
        "traceback": tb,
        "host": host_name(),
        "python": PYTHON_VERSION,
    }


def failure_info(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    """Describe a job-level failure (``JobFailedError``, ``JobLostError``, ``WorkunitError``)."""
    info: dict[str, Any] = {"type": kind, "module": "boinc_executor", "message": message}
    info.update({k: _plain(v) for k, v in extra.items()})
    return info
