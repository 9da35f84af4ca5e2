"""Volunteer-side entry point: run one job in a BOINC slot directory.

``python -m boinc_executor.volunteer.runner`` is what the app version's shell script or
batch file runs, with the slot directory as the working directory. The runner

1. resolves the open names ``program.pkl``, ``data.pkl`` and ``result.pkl``
   (real files in ``<copy_file/>`` mode, ``<soft_link>`` files otherwise),
2. checks the job was pickled by the same Python ``major.minor``,
3. calls the function once per call in the data file, capturing each call's
   output (passed through to the real streams as well),
4. writes the result record under the output's open name, then
   ``boinc_finish_called``, and exits 0.

Results are pickled so that the script's own classes travel by reference
(:mod:`boinc_executor.protocol.classref`); an exception of such a class also
travels as its own small pickle, so the master can raise it as itself.

It *always* leaves a record: when the input is corrupt, cloudpickle is missing
or the interpreter does not match, it writes an error record instead, so the
master's future fails with the reason rather than hanging. Only when even that
record cannot be written does it exit non-zero (BOINC then reports a client
error with ``stderr.txt``).

It imports nothing server-side: only the standard library and the protocol.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .. import protocol
from ..protocol.classref import exception_blob
from ..protocol.taskoutput import fit_outputs
from .slotio import read_input, read_program, write_result

_UNKNOWN_JOB = "unknown_0_0"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}

# Long-lived local workers run many jobs of one function: keep the loaded
# function rather than unpickling the same program file for every job.
_program_cache: dict[str, Callable[..., Any]] = {}
_PROGRAM_CACHE_SIZE = 16
# The program bytes loaded last and their function: a worker runs job after job of
# one program, and slotio.read_program hands it the same bytes object while the file is
# unchanged, so neither its header nor its digest is computed again.
_last_program: list[tuple[bytes, Callable[..., Any]]] = []


_NOTHING_PRINTED = ("", False)  # what a call that printed nothing leaves in a stream


class _CallCapture(io.TextIOBase):
    """Passes writes through to the real stream and keeps the current call's last characters."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self.parts: list[str] = []  # what the current call printed so far
        self._size = 0
        self._cut = False
        self._job = ""  # the tail of the whole job's output

    def write(self, s: str) -> int:
        self._inner.write(s)
        self.parts.append(s)
        self._size += len(s)
        if self._size > 2 * protocol.OUTPUT_CHARS:
            kept = "".join(self.parts)[-protocol.OUTPUT_CHARS :]
            self.parts, self._size, self._cut = [kept], len(kept), True
        return len(s)

    def flush(self) -> None:
        self._inner.flush()

    def take(self) -> tuple[str, bool]:
        """The finished call's text (its last ``OUTPUT_CHARS``) and whether it was cut."""
        if not self.parts:
            return _NOTHING_PRINTED  # most calls print nothing: this runs once per call
        text = "".join(self.parts)
        cut = self._cut or len(text) > protocol.OUTPUT_CHARS
        text = text[-protocol.OUTPUT_CHARS :]
        self.parts, self._size, self._cut = [], 0, False
        self._job = protocol.tail(self._job + protocol.tail(text))
        return text, cut

    def job_tail(self) -> str:
        """The tail of the whole job's output, for the record's job-level fields."""
        return self._job


def _call_outputs(
    printed: dict[int, tuple[tuple[str, bool], tuple[str, bool]]], n_calls: int
) -> list[protocol.TaskOutput]:
    """Per-call outputs, cut to the job's budget per stream (none when no call printed).

    ``printed`` holds, by call index, what the calls that printed anything
    printed: (stdout text, cut), (stderr text, cut).
    """
    if not printed:
        return []
    out = [printed[i][0] if i in printed else _NOTHING_PRINTED for i in range(n_calls)]
    err = [printed[i][1] if i in printed else _NOTHING_PRINTED for i in range(n_calls)]
    outs = fit_outputs([text for text, _ in out])
    errs = fit_outputs([text for text, _ in err])
    return [
        protocol.TaskOutput(o, e, cut_o or len(o) < len(t_o), cut_e or len(e) < len(t_e))
        for o, e, (t_o, cut_o), (t_e, cut_e) in zip(outs, errs, out, err, strict=True)
    ]


def _load_program(data: bytes) -> Callable[..., Any]:
    if _last_program and _last_program[0][0] is data:
        return _last_program[0][1]  # the very bytes read_program kept: checked and loaded
    header, payload = protocol.decode_frame(data, protocol.KIND_PROGRAM)
    _check_python(header)
    key = hashlib.sha256(data).hexdigest()
    fn = _program_cache.get(key)
    if fn is None:
        import pickle

        fn = pickle.loads(payload)
        if not callable(fn):
            raise protocol.ProtocolError("program file does not hold a callable")
        if len(_program_cache) >= _PROGRAM_CACHE_SIZE:
            _program_cache.pop(next(iter(_program_cache)))
        _program_cache[key] = fn
    _last_program[:] = [(data, fn)]
    return fn


def _check_python(header: dict[str, Any]) -> None:
    wanted = header.get("python")
    if wanted != protocol.python_tag():
        raise _EnvironmentMismatch(
            f"this job was pickled by Python {wanted} but this host runs Python "
            f"{protocol.python_tag()}; pickled code only runs on the same major.minor version"
        )


class _EnvironmentMismatch(Exception):
    """The host cannot run the job (interpreter or dependency mismatch)."""


def _load_calls(
    frame: tuple[dict[str, Any], bytes], job: str
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    import pickle

    header, payload = frame
    _check_python(header)
    if header.get("job") != job:
        raise protocol.ProtocolError(f"data file is for job {header.get('job')!r}, not {job!r}")
    calls = pickle.loads(payload)
    if not isinstance(calls, list):
        raise protocol.ProtocolError("data file does not hold a list of calls")
    return calls


def _job_of(header: dict[str, Any] | None, fallback: Callable[[], str]) -> str:
    """The job name from a data file's header, for labelling even a failed run."""
    job = str(header.get("job", "")) if header is not None else ""
    return job if protocol.parse_job_name(job) else fallback()


def slot_job_name(slot: Path) -> str:
    """The work-unit name from the slot's ``init_data.xml``, as the BOINC client writes it.

    Used to label an error record when the data file itself is unreadable.
    """
    try:
        text = (slot / "init_data.xml").read_text(errors="replace")
    except OSError:
        return _UNKNOWN_JOB
    match = re.search(r"<wu_name>([^<]*)</wu_name>", text)
    name = match.group(1).strip() if match else ""
    return name if protocol.parse_job_name(name) else _UNKNOWN_JOB


def _failure(job: str, message: str, exc: BaseException | None = None) -> bytes:
    info = protocol.failure_info("JobFailedError", message)
    info["host"] = protocol.host_name()
    if exc is not None:
        info["traceback"] = protocol.error_info(exc)["traceback"]
    return protocol.encode_error_record(job, info)


def execute(
    program: bytes, data: bytes, job_hint: Callable[[], str] = lambda: _UNKNOWN_JOB
) -> bytes:
    """Run a job given its two input files' bytes; returns the record to write.

    ``job_hint`` names the job when the data file cannot (it is asked only then).
    Never raises for anything the job or its input can cause: failures become an
    error record.
    """
    frame: tuple[dict[str, Any], bytes] | protocol.ProtocolError
    try:
        frame = protocol.decode_frame(data, protocol.KIND_DATA)  # read once, used twice
    except protocol.ProtocolError as exc:
        frame = exc  # reported once the job's name is known
    job = _job_of(frame[0] if isinstance(frame, tuple) else None, job_hint)
    out = _CallCapture(sys.stdout)
    err = _CallCapture(sys.stderr)
    try:
        try:
            import cloudpickle  # noqa: F401 - registers the reducers the program needs
        except ImportError as exc:
            raise _EnvironmentMismatch(
                "cloudpickle is not importable on this host; the app version must ship it"
            ) from exc
        fn = _load_program(program)
        if isinstance(frame, protocol.ProtocolError):
            raise frame
        calls = _load_calls(frame, job)
    except Exception as exc:
        return _failure(job, f"job could not start on {protocol.host_name()}: {exc}", exc)
    outcomes: list[tuple[bool, Any]] = []
    append = outcomes.append
    # Only the calls that printed: most print nothing, and a map chunk's loop should
    # cost little more than the calls themselves.
    printed: dict[int, tuple[tuple[str, bool], tuple[str, bool]]] = {}
    saved = sys.stdout, sys.stderr  # (contextlib's redirect_* do this, at twice the cost)
    sys.stdout, sys.stderr = out, err
    try:
        for args, kwargs in calls:
            try:
                append((True, fn(*args, **kwargs) if kwargs else fn(*args)))
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                append((False, _call_error(exc)))
            if out.parts or err.parts:
                printed[len(outcomes) - 1] = (out.take(), err.take())
    finally:
        sys.stdout, sys.stderr = saved
        # Output appears as the job ends rather than when the process exits.
        out.flush()
        err.flush()
    encode = functools.partial(
        protocol.encode_result,
        job,
        stdout=out.job_tail(),
        stderr=err.job_tail(),
        outputs=_call_outputs(printed, len(outcomes)),
    )
    try:
        return encode(outcomes)
    except Exception:
        return encode([_picklable_outcome(o) for o in outcomes])


def _call_error(exc: BaseException) -> dict[str, Any]:
    """A failed call's description; an exception of the script's class also travels whole."""
    info = protocol.error_info(exc)
    blob = exception_blob(exc)
    if blob is not None:
        info["instance"] = blob
    return info


def _picklable_outcome(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    """Replace a value that cannot be pickled by an error saying so."""
    ok, value = outcome
    if not ok:
        return outcome
    try:
        import cloudpickle

        cloudpickle.dumps(value)
    except Exception as exc:
        wrapped = TypeError(f"the function's return value could not be pickled: {exc}")
        return (False, protocol.error_info(wrapped, with_traceback=False))
    return outcome


def run_slot(slot: Path | str) -> int:
    """Run the job laid out in ``slot``; returns the process exit code."""
    slot = os.fspath(slot)
    return write_outputs(slot, job_record(slot))


def job_record(slot: str) -> bytes:
    """Run the job laid out in ``slot``; returns its result or error record."""
    try:
        program = read_program(slot)
        data = read_input(slot, protocol.OPEN_DATA)
    except (OSError, protocol.ProtocolError) as exc:
        return _failure(slot_job_name(Path(slot)), f"job input missing or unreadable: {exc}")
    # init_data.xml only names the job when the data file cannot.
    return execute(program, data, lambda: slot_job_name(Path(slot)))


def write_outputs(slot: str, record: bytes) -> int:
    """:func:`write_result`, as an exit code: 1 (and a line on stderr) if it failed."""
    try:
        write_result(slot, record)
    except OSError as exc:
        print(f"boinc-executor runner: cannot write the result: {exc}", file=sys.stderr)
        if exc.errno not in _DISK_FULL:
            return 1
        # The record did not fit; a small one saying so still does (written in place,
        # it replaces what the failed write left).
        record = _failure(
            _record_job(record, slot_job_name(Path(slot))),
            f"the disk is full on {protocol.host_name()}: the job's result record "
            f"({len(record)} bytes) could not be written to {slot} ({exc.strerror}); "
            "free space there (or return smaller results) and run the job again",
        )
        try:
            write_result(slot, record)
        except OSError as again:
            print(f"boinc-executor runner: cannot write the error record: {again}", file=sys.stderr)
            return 1
    return 0


def _record_job(record: bytes, fallback: str) -> str:
    """The job a record we just encoded is for."""
    try:
        header, _ = protocol.decode_frame(record, protocol.KIND_RESULT)
    except protocol.ProtocolError:
        return fallback
    job = header.get("job")
    return job if isinstance(job, str) else fallback


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run the job in the current directory (the slot)."""
    args = sys.argv[1:] if argv is None else argv
    slot = Path(args[0]) if args else Path(os.getcwd())
    return run_slot(slot)


if __name__ == "__main__":
    sys.exit(main())
