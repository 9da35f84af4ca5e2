"""boinc-executor: run Python functions on BOINC volunteers through ``concurrent.futures``.

``BoincExecutor`` is a drop-in ``Executor``; without a BOINC project it runs on
an embedded local backend through the very same file protocol. The names below
are loaded lazily (as ``concurrent.futures`` loads its executors), so importing
the package is cheap and never imports a backend or ``MySQLdb``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BoincExecutor": "executor",
    "JobParams": "config",
    "register_trusted_type": "protocol.decoding",
    "TaskOutput": "protocol",
    "task_output": "output",
    "pyboinc_call": "pyboinc",
    "pyboinc_master": "pyboinc",
    "pyboinc_get_input": "pyboinc",
    "pyboinc_return_output": "pyboinc",
    "BoincExecutorError": "errors",
    "BatchError": "errors",
    "BatchLockedError": "errors",
    "BatchMismatchError": "errors",
    "BatchNotFoundError": "errors",
    "ConfigError": "errors",
    "DatabaseError": "errors",
    "JobFailedError": "errors",
    "JobLostError": "errors",
    "ProtocolError": "errors",
    "RemoteError": "errors",
    "ResultDecodeError": "errors",
    "SubmissionError": "errors",
    "UnsafeResultError": "errors",
    "WorkunitError": "errors",
}

__all__ = [
    "BatchError",
    "BatchLockedError",
    "BatchMismatchError",
    "BatchNotFoundError",
    "BoincExecutor",
    "BoincExecutorError",
    "ConfigError",
    "DatabaseError",
    "JobFailedError",
    "JobLostError",
    "JobParams",
    "ProtocolError",
    "RemoteError",
    "ResultDecodeError",
    "SubmissionError",
    "TaskOutput",
    "UnsafeResultError",
    "WorkunitError",
    "__version__",
    "pyboinc_call",
    "pyboinc_get_input",
    "pyboinc_master",
    "pyboinc_return_output",
    "register_trusted_type",
    "task_output",
]

if TYPE_CHECKING:
    from .config import JobParams
    from .errors import (
        BatchError,
        BatchLockedError,
        BatchMismatchError,
        BatchNotFoundError,
        BoincExecutorError,
        ConfigError,
        DatabaseError,
        JobFailedError,
        JobLostError,
        ProtocolError,
        RemoteError,
        ResultDecodeError,
        SubmissionError,
        UnsafeResultError,
        WorkunitError,
    )
    from .executor import BoincExecutor
    from .output import task_output
    from .protocol import TaskOutput
    from .protocol.decoding import register_trusted_type
    from .pyboinc import pyboinc_call, pyboinc_get_input, pyboinc_master, pyboinc_return_output


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
