"""The on-disk protocol: the one contract between master, backends, runner and daemons.

Every file that crosses a process boundary is written and read here (see
``docs/protocol.md``). Files are *framed*: a magic line naming the kind and
format version, one line of JSON (the header), then an optional pickle payload.
The header is readable without unpickling anything, so a record can always be
attributed to its job and classified before its payload is touched.

This module imports nothing beyond the standard library at import time: the
volunteer runner and the server daemons import it, and the runner must be able to
report "cloudpickle is missing" rather than die on import.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import operator
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ProtocolError, ResultDecodeError
from . import classref
from .decoding import TypePolicy, decode_exception, safe_loads
from .errorinfo import PYTHON_VERSION as _PYTHON_VERSION
from .errorinfo import error_info, failure_info, host_name
from .fileio import atomic_write, read_bounded
from .names import NEW, parse_job_name, record_file_name
from .taskoutput import JOB_OUTPUT_CHARS, OUTPUT_CHARS, TaskOutput, read_outputs

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "FORMAT_VERSION",
    "JOB_OUTPUT_CHARS",
    "KIND_DATA",
    "KIND_PROGRAM",
    "KIND_RESULT",
    "OUTPUT_CHARS",
    "TAIL_CHARS",
    "ProtocolError",
    "ResultRecord",
    "TaskOutput",
    "all_succeeded",
    "atomic_write",
    "decode_frame",
    "decode_result",
    "deliver_record",
    "encode_data",
    "encode_error_record",
    "encode_frame",
    "encode_program",
    "encode_result",
    "error_info",
    "failure_info",
    "host_name",
    "python_tag",
    "read_bounded",
    "read_outputs",
    "tail",
]

FORMAT_VERSION = 1

DEFAULT_MAX_RESULT_BYTES = 100_000_000  # the output template's <max_nbytes>
TAIL_CHARS = 4096

_MAGIC_PREFIX = b"BOINC-EXECUTOR/"

KIND_PROGRAM = "program"
KIND_DATA = "data"
KIND_RESULT = "result"
_DATA_MAGIC = _MAGIC_PREFIX + KIND_DATA.encode() + b"/"
# Each kind's whole first line in this release's format, e.g. b"BOINC-EXECUTOR/result/1".
_MAGIC_LINES = {
    kind: b"%s%s/%d" % (_MAGIC_PREFIX, kind.encode(), FORMAT_VERSION)
    for kind in (KIND_PROGRAM, KIND_DATA, KIND_RESULT)
}


def python_tag() -> str:
    """``major.minor`` of the running interpreter: pickled code only runs on the same one."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# --------------------------------------------------------------------------- files


def deliver_record(batch_dir: Path, job: str, tag: str, data: bytes) -> Path:
    """Place a result or error record into ``BATCH_DIR/new/`` atomically.

    This is how every record reaches the executor: the local backend's workers,
    the BOINC assimilator and the backends' own failure reports all call it.
    """
    target = batch_dir / NEW / record_file_name(job, tag)
    atomic_write(target, data)
    return target


# --------------------------------------------------------------------------- framing


# Made once: json.dumps and json.loads build a new encoder or decode by detecting
# the encoding on every call, a third of a small record's framing cost.
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
_HEADER_DECODER = json.JSONDecoder()


def encode_frame(kind: str, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Serialise a framed file: magic line, JSON header line, payload."""
    head = dict(header, format=FORMAT_VERSION)
    line = _HEADER_ENCODER.encode(head).encode("ascii")
    return b"%s%s/%d\n%s\n%s" % (_MAGIC_PREFIX, kind.encode(), FORMAT_VERSION, line, payload)


def decode_frame(data: bytes, kind: str) -> tuple[dict[str, Any], bytes]:
    """Split a framed file into its JSON header and payload.

    Raises:
        ProtocolError: not a framed file of ``kind``, an unknown version, or a bad header.
    """
    magic, nl, rest = data.partition(b"\n")
    if magic != _MAGIC_LINES.get(kind):  # (one comparison for every well-formed file)
        expected = _MAGIC_PREFIX + kind.encode() + b"/"
        if not nl or not magic.startswith(expected):
            raise ProtocolError(f"not a boinc-executor {kind} file")
        version = magic[len(expected) :]
        if version != str(FORMAT_VERSION).encode():
            raise ProtocolError(
                f"{kind} file has format version {version.decode(errors='replace')!r}; "
                f"this release reads version {FORMAT_VERSION}"
            )
    elif not nl:
        raise ProtocolError(f"not a boinc-executor {kind} file")
    line, nl, payload = rest.partition(b"\n")
    if not nl:
        raise ProtocolError(f"{kind} file is truncated inside its header")
    try:  # headers are written in ASCII; UTF-8 is all a reader need accept
        text = line.decode("utf-8").lstrip()
        header, end = _HEADER_DECODER.raw_decode(text)  # (decode() costs two regex matches)
        if end != len(text) and text[end:].strip():
            raise ValueError(f"extra data after the header's JSON object at column {end + 1}")
    except ValueError as exc:  # (UnicodeDecodeError included)
        raise ProtocolError(f"{kind} file header is not valid JSON: {exc}") from exc
    except RecursionError:  # a volunteer's header nested deeper than the parser's stack
        raise ProtocolError(f"{kind} file header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{kind} file header is not a JSON object")
    return header, payload


# --------------------------------------------------------------------------- inputs


def _code_fingerprint(fn: Any) -> str:
    """A digest of a function's code that is stable across interpreter runs.

    The pickle of a function is not byte-stable (memo order, addresses in reprs),
    but its bytecode and constants are, and they change when its source does.
    """
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:
        return ""
    digest = hashlib.sha256()
    todo = [code]
    while todo:
        current = todo.pop()
        digest.update(current.co_code)
        for const in current.co_consts:
            if hasattr(const, "co_code"):
                todo.append(const)
            else:
                digest.update(repr(const).encode(errors="replace"))
    return digest.hexdigest()[:16]


def _function_module(fn: Any) -> str:
    """The module whose classes a function's results may hold (through partials and methods)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    module = getattr(fn, "__module__", None)
    return module if isinstance(module, str) else type(fn).__module__


def _pickle_program(fn: Any, module: str) -> tuple[bytes, list[type]]:
    """``cloudpickle.dumps(fn)``, noting the script's classes it carries."""
    import cloudpickle

    shipped: list[type] = []

    class ShippingPickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type) and obj.__module__ in ("__main__", module):
                shipped.append(obj)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    ShippingPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
    return buffer.getvalue(), shipped


def encode_program(fn: Any, policy: TypePolicy | None = None) -> bytes:
    """Serialise a callable with cloudpickle (lambdas, closures and ``__main__`` functions work).

    Args:
        fn: the callable.
        policy: the batch's type policy; it learns which classes results of ``fn``
            may hold by reference (the function's module, the ``__main__`` classes
            the program carries).
    """
    import cloudpickle

    qualname = getattr(fn, "__qualname__", type(fn).__qualname__)
    name = f"{getattr(fn, '__module__', '?')}.{qualname}"
    header = {
        "python": python_tag(),
        "cloudpickle": cloudpickle.__version__,
        "name": name,
        "code": _code_fingerprint(fn),
    }
    module = _function_module(fn)
    payload, shipped = _pickle_program(fn, module)
    if policy is not None:
        policy.ship(module, shipped)
    return encode_frame(KIND_PROGRAM, header, payload)


def encode_data(
    job: str, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], *, plain: bool = False
) -> bytes:
    """Serialise a job's calls: a list of ``(args, kwargs)``.

    ``plain`` says the caller knows the calls hold only plain data (numbers,
    strings, bytes and containers of them, see :mod:`boinc_executor.fingerprint`):
    the standard pickle then writes what cloudpickle would, without building a
    cloudpickle pickler per job. The header is the one :func:`encode_frame` writes,
    formatted directly: a job name needs no JSON escaping.
    """
    if plain:
        payload = pickle.dumps(list(calls), protocol=pickle.HIGHEST_PROTOCOL)
    else:
        import cloudpickle

        payload = cloudpickle.dumps(list(calls), protocol=pickle.HIGHEST_PROTOCOL)
    if parse_job_name(job) is None:
        raise ValueError(f"{job!r} is not a job name")
    return b'%s%d\n{"python":"%s","job":"%s","calls":%d,"format":%d}\n%s' % (
        _DATA_MAGIC,
        FORMAT_VERSION,
        python_tag().encode(),
        job.encode(),
        len(calls),
        FORMAT_VERSION,
        payload,
    )


# --------------------------------------------------------------------------- results


def tail(text: str, chars: int = TAIL_CHARS) -> str:
    """The last ``chars`` characters of ``text``."""
    return text[-chars:]


def encode_result(
    job: str,
    outcomes: Sequence[tuple[bool, Any]],
    *,
    stdout: str = "",
    stderr: str = "",
    outputs: Sequence[TaskOutput] = (),
) -> bytes:
    """Serialise a successful run: one ``(True, value)`` or ``(False, error_info)`` per call.

    Values are pickled with :class:`~.classref.ResultPickler`: instances of the
    script's classes go by reference. A value only cloudpickle can serialise (a
    lambda, a class it must send by value) falls back to it, and the master refuses
    that unless ``trust_results=True``.

    Args:
        job: the job name.
        outcomes: per call, ``(True, value)`` or ``(False, error_info)``.
        stdout: the job's standard output (its tail is kept).
        stderr: the job's standard error (its tail is kept).
        outputs: per call, the captured output (``TaskOutput``); empty ones are
            written as ``{}``.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: a value cannot be pickled at all.
    """
    try:
        payload = classref.dumps(list(outcomes))
    except Exception:
        import cloudpickle

        payload = cloudpickle.dumps(list(outcomes), protocol=pickle.HIGHEST_PROTOCOL)
    if not stdout and not stderr and not any(outputs):
        return _plain_result(job, len(outcomes), payload)
    header = {
        "job": job,
        "status": "ok",
        "calls": len(outcomes),
        "host": host_name(),
        "python": _PYTHON_VERSION,
        "stdout": tail(stdout),
        "stderr": tail(stderr),
        "error": None,
    }
    if any(outputs):
        header["output"] = [o.to_header() for o in outputs]
    return encode_frame(KIND_RESULT, header, payload)


def _plain_result(job: str, calls: int, payload: bytes) -> bytes:
    """:func:`encode_result`'s bytes for a run that printed nothing, built from constant parts.

    Most records are this kind, and on a volunteer's host or a local worker the
    encoding runs right after the job's code, with cold caches: one format of a
    job name and a count costs a third of a JSON encoding of the whole header.
    """
    head, rest = _plain_result_parts()
    return b'%s%s,"status":"ok","calls":%d,%s\n%s' % (
        head,
        _HEADER_ENCODER.encode(job).encode(),
        calls,
        rest,
        payload,
    )


@functools.cache
def _plain_result_parts() -> tuple[bytes, bytes]:
    """The frame of a plain result up to its job name, and its header after the call count."""
    line = _HEADER_ENCODER.encode(
        {
            "host": host_name(),
            "python": _PYTHON_VERSION,
            "stdout": "",
            "stderr": "",
            "error": None,
            "format": FORMAT_VERSION,
        }
    )
    head = b'%s%s/%d\n{"job":' % (_MAGIC_PREFIX, KIND_RESULT.encode(), FORMAT_VERSION)
    return head, line[1:].encode("ascii")


def encode_error_record(
    job: str, error: dict[str, Any], *, stdout: str = "", stderr: str = "", source: str = "runner"
) -> bytes:
    """Serialise a job-level failure: the job produced no per-call outcomes."""
    header = {
        "job": job,
        "status": "error",
        "calls": 0,
        "host": str(error.get("host", "")),
        "python": _PYTHON_VERSION,
        "stdout": tail(stdout),
        "stderr": tail(stderr),
        "error": error,
        "source": source,
    }
    return encode_frame(KIND_RESULT, header)


def _text_field(header: dict[str, Any], key: str) -> str:
    """A header field that must be text; anything else (a nested list, say) is refused."""
    value = header.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError(f"record header field {key!r} is a {type(value).__name__}, not text")
    return value


def _brief(value: Any) -> str:
    """A short, always-computable description of a volunteer's value for a message."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return repr(value)[:100]
    return f"<a {type(value).__name__}>"


@dataclass(slots=True)
class ResultRecord:
    """A decoded result or error record.

    Not frozen: one is built per record on the decoder's hot path, where a
    frozen dataclass's ``__init__`` costs four times as much, and nothing
    changes one once built.

    Attributes:
        job: the job the record claims to be for (checked against the file name).
        ok: whether the job ran; if not, ``error`` says why.
        outcomes: per call, ``(True, value)`` or ``(False, error_info)``.
        error: the job-level failure, when ``ok`` is false.
        host: where it ran.
        stdout: tail of the captured standard output.
        stderr: tail of the captured standard error.
        outputs: per call, what it printed (see :func:`read_outputs`).
    """

    job: str
    ok: bool
    outcomes: list[tuple[bool, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    host: str = ""
    stdout: str = ""
    stderr: str = ""
    outputs: list[TaskOutput] = field(default_factory=list)


_first = operator.itemgetter(0)


def all_succeeded(outcomes: Sequence[tuple[bool, Any]]) -> bool:
    """Whether no call of a job's decoded outcomes failed (a check in C, not per entry)."""
    return all(map(_first, outcomes))


def _needs_rebuild(outcomes: list[Any]) -> bool:
    """Check a payload's outcome entries; False when the list can be used as it is.

    It can when every entry is a plain ``(True, value)`` tuple, the common case,
    which builtins check over the whole list with no Python step per entry: a
    chunk of a thousand calls costs the decoder microseconds. Otherwise each
    entry is checked, and the list is rebuilt (failed calls get their
    exceptions decoded).
    """
    if len(outcomes) == 1:  # a chunksize-1 job: no sets to build
        entry = outcomes[0]
        if type(entry) is tuple and len(entry) == 2 and entry[0] is True:
            return False
    elif (
        set(map(type, outcomes)) <= {tuple}
        and set(map(len, outcomes)) <= {2}
        and set(map(type, oks := list(map(_first, outcomes)))) <= {bool}
        and all(oks)
    ):
        return False
    for entry in outcomes:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], bool)):
            raise ResultDecodeError("record holds a malformed outcome entry")
        if not entry[0] and not isinstance(entry[1], dict):
            raise ResultDecodeError("record holds a failed call without an error description")
    return True


def decode_result(
    data: bytes, policy: TypePolicy, *, expect_job: str, expect_calls: int
) -> ResultRecord:
    """Decode a result record, checking it against what the master expects.

    Raises:
        ProtocolError: malformed framing, or the record is for another job or
            has the wrong number of outcomes.
        UnsafeResultError: the payload names a type the policy does not allow.
        ResultDecodeError: the payload is corrupt.
    """
    header, payload = decode_frame(data, KIND_RESULT)
    job = header.get("job")
    if job != expect_job:
        raise ProtocolError(f"record names job {_brief(job)} but was delivered as {expect_job!r}")
    host = _text_field(header, "host")
    stdout = _text_field(header, "stdout")
    stderr = _text_field(header, "stderr")
    outputs = read_outputs(header, max(expect_calls, 0))
    if header.get("status") == "error":
        error = header.get("error")
        if not isinstance(error, dict):
            raise ProtocolError("error record carries no error description")
        return ResultRecord(
            expect_job, False, error=error, host=host, stdout=stdout, stderr=stderr, outputs=outputs
        )
    if header.get("status") != "ok":
        raise ProtocolError(f"record has unknown status {_brief(header.get('status'))}")
    outcomes = safe_loads(payload, policy)
    if not isinstance(outcomes, list) or len(outcomes) != expect_calls:
        raise ResultDecodeError(
            f"record holds {len(outcomes) if isinstance(outcomes, list) else 'no list of'} "
            f"outcomes, expected {expect_calls}"
        )
    if _needs_rebuild(outcomes):
        outcomes = [(ok, v if ok else decode_exception(v, policy)) for ok, v in outcomes]
    return ResultRecord(
        expect_job, True, outcomes, host=host, stdout=stdout, stderr=stderr, outputs=outputs
    )
