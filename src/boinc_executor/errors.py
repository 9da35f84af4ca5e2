"""Exceptions raised by boinc-executor, and the rebuilding of remote errors.

One root, :class:`BoincExecutorError`, with families below it, so callers can
catch as broadly or narrowly as they need (the shape follows httpx). Lower-layer
errors (``OSError``, ``MySQLdb.Error``, ``CalledProcessError``) are translated into
these once, at the boundary where they happen.

A job that raised on a volunteer host comes back as an *error record*: plain data
describing the exception. :func:`rebuild_exception` turns that record into an
exception object without ever importing or calling code chosen by the volunteer.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BatchError",
    "BatchLockedError",
    "BatchMismatchError",
    "BatchNotFoundError",
    "BoincExecutorError",
    "ConfigError",
    "DatabaseError",
    "JobFailedError",
    "JobLostError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "ResultDecodeError",
    "SubmissionError",
    "UnsafeResultError",
    "WorkunitError",
    "describe_error_mask",
    "rebuild_exception",
]


class BoincExecutorError(Exception):
    """Root of every error boinc-executor raises on its own account."""


class ConfigError(BoincExecutorError):
    """The executor or a BOINC project is configured wrongly; the message says how to fix it."""


class DatabaseError(BoincExecutorError):
    """The BOINC project's database could not be reached or refused a statement."""


class SubmissionError(BoincExecutorError):
    """A job could not be handed to the backend (staging or ``create_work`` failed)."""


class BatchError(BoincExecutorError):
    """A batch directory or batch ID cannot be used as asked."""


class BatchLockedError(BatchError):
    """Another executor holds the batch directory's lock."""


class BatchNotFoundError(BatchError):
    """No batch with this ID (or no batch directory for it) exists."""


class BatchMismatchError(BatchError):
    """A replayed call differs from the call journaled at the same index."""


class ProtocolError(BoincExecutorError):
    """A file of the on-disk protocol is malformed, truncated or of an unknown version."""


class ResultDecodeError(ProtocolError):
    """A result record could not be decoded."""


class UnsafeResultError(ResultDecodeError):
    """A result payload asked for a type that is not on the allow-list."""


class JobFailedError(BoincExecutorError):
    """A job ended without producing results for its calls."""


class JobLostError(JobFailedError):
    """The process running a job died before it could write a result record."""


class WorkunitError(JobFailedError):
    """BOINC gave up on a work unit (its ``error_mask`` is set).

    Attributes:
        error_mask: the work unit's ``error_mask`` bits.
        exit_status: the last result's exit status, if known.
        stderr_tail: the end of the last result's ``stderr_out``, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        error_mask: int = 0,
        exit_status: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.error_mask = error_mask
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields would be lost by the default exception pickling.
        return (
            _rebuild_workunit_error,
            (str(self), self.error_mask, self.exit_status, self.stderr_tail),
        )


def _rebuild_workunit_error(
    message: str, error_mask: int, exit_status: int | None, stderr_tail: str
) -> WorkunitError:
    return WorkunitError(
        message, error_mask=error_mask, exit_status=exit_status, stderr_tail=stderr_tail
    )


# workunit.error_mask bits (BOINC db/boinc_db_types.h; boinc-facts §2).
ERROR_MASK_BITS: dict[int, str] = {
    1: "a result could not be sent to any host",
    2: "too many results failed on volunteer hosts",
    4: "too many successful results without agreement",
    8: "too many results were created without a valid one (errors, aborts or missed deadlines)",
    16: "the job was cancelled",
    32: "no canonical result was found",
}


def describe_error_mask(mask: int) -> str:
    """Spell out a work unit's ``error_mask`` for an error message."""
    parts = [text for bit, text in ERROR_MASK_BITS.items() if mask & bit]
    unknown = mask & ~sum(ERROR_MASK_BITS)
    if unknown:
        parts.append(f"unknown error bits {unknown:#x}")
    return "; ".join(parts) or "no error bits set"


class RemoteTraceback(Exception):
    """Carries a remote traceback's text; attached as ``__cause__`` like ``ProcessPoolExecutor``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(BoincExecutorError):
    """A job raised an exception whose type is not safe to rebuild on this side.

    Attributes:
        type_name: the remote exception's qualified type name.
        message: ``str()`` of the remote exception.
        traceback: the formatted remote traceback.
        host: the host the job ran on.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "", host: str = "") -> None:
        super().__init__(type_name, message, traceback, host)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.host = host

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


# Built-in exception types are rebuilt as themselves. Anything else (user-defined
# types, types from third-party modules) becomes RemoteError: importing a module
# named by a volunteer would run code the volunteer chose.
_GROUP = getattr(builtins, "BaseExceptionGroup", ())
_REBUILDABLE: dict[str, type[BaseException]] = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, _GROUP)
}


def _builtin_exception(cls: type[BaseException], args: Any, message: str) -> BaseException:
    """Construct a built-in exception from plain-data args, falling back to the message."""
    for attempt in (tuple(args) if isinstance(args, (list, tuple)) else None, (message,)):
        if attempt is None:
            continue
        try:
            return cls(*attempt)
        except Exception:  # noqa: S112 - a signature the args do not fit: try the next form
            continue
    return RemoteError(cls.__name__, message)


def rebuild_exception(info: Mapping[str, Any]) -> BaseException:
    """Turn an error record's ``error`` mapping into an exception object.

    Built-in exception types come back as the same type with the remote
    traceback attached as ``__cause__``; so does an exception of the script's own
    class, which the result decoder rebuilt (under ``"exception"``) when the
    batch trusts its class; BOINC failures as :class:`WorkunitError`, lost jobs
    as :class:`JobLostError`; anything else as :class:`RemoteError`.

    Args:
        info: the plain-data error description written by the runner or a daemon.

    Returns:
        The exception, ready to be set on a future.
    """
    type_name = str(info.get("type", "Exception"))
    module = str(info.get("module", ""))
    message = str(info.get("message", ""))
    tb = str(info.get("traceback", ""))
    host = str(info.get("host", ""))
    exc: BaseException
    rebuilt = info.get("exception")
    if isinstance(rebuilt, BaseException):
        exc = rebuilt
    elif module == "boinc_executor" and type_name == "WorkunitError":
        exit_status = info.get("exit_status")
        exc = WorkunitError(
            message,
            error_mask=int(info.get("error_mask", 0) or 0),
            exit_status=int(exit_status) if isinstance(exit_status, int) else None,
            stderr_tail=str(info.get("stderr_tail", "")),
        )
    elif module == "boinc_executor" and type_name == "JobLostError":
        exc = JobLostError(message)
    elif module == "builtins" and type_name in _REBUILDABLE:
        exc = _builtin_exception(_REBUILDABLE[type_name], info.get("args"), message)
    else:
        qualified = f"{module}.{type_name}" if module and module != "builtins" else type_name
        exc = RemoteError(qualified, message, tb, host)
    if tb:
        header = f"\n### Worker on host {host}\n" if host else "\n"
        exc.__cause__ = RemoteTraceback(f'{header}"""\n{tb}"""')
    return exc
