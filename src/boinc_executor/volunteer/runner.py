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
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .. import protocol
from ..protocol.classref import exception_blob
from ..protocol.fileio import rewrite_fd
from ..protocol.taskoutput import fit_outputs

_SOFT_LINK_OPEN = b"<soft_link>"
_SOFT_LINK_CLOSE = b"</soft_link>"
_MAX_LINK_FILE = 4096
_MAX_INPUT_BYTES = 2**31
_UNKNOWN_JOB = "unknown_0_0"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}

# Long-lived local workers run many jobs of one function: keep the loaded
# function rather than unpickling the same program file for every job.
_program_cache: dict[str, Callable[..., Any]] = {}
_PROGRAM_CACHE_SIZE = 16
# The program bytes loaded last and their function: a worker runs job after job of
# one program, and _read_program hands it the same bytes object while the file is
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
        return _last_program[0][1]  # the very bytes _read_program kept: checked and loaded
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
        program = _read_program(slot)
        data = read_input(slot, protocol.OPEN_DATA)
    except (OSError, protocol.ProtocolError) as exc:
        return _failure(slot_job_name(Path(slot)), f"job input missing or unreadable: {exc}")
    # init_data.xml only names the job when the data file cannot.
    return execute(program, data, lambda: slot_job_name(Path(slot)))


# --------------------------------------------------------------------------- slot I/O
#
# A long-lived local worker runs thousands of jobs in one slot, so each file is
# opened once per job at most and the program file, which stays linked while it
# is unchanged, is not read again at all. The outputs are written in place
# (write + ftruncate, never O_TRUNC or a temp file and rename): nothing reads
# them before the runner exits, the client renames result.pkl away afterwards,
# and boinc_finish_called, written last, is what says the run finished.

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_BINARY", 0)
_RDWR_FLAGS = (
    os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
)
# The program file last read, by (device, inode, size, mtime): at most one entry.
_program_file: dict[tuple[int, int, int, int], bytes] = {}


def _soft_link_target(slot: str, head: bytes) -> str | None:
    """The path a BOINC soft-link file points at, or None if ``head`` is not one."""
    head = head.strip()
    if not (head.startswith(_SOFT_LINK_OPEN) and head.endswith(_SOFT_LINK_CLOSE)):
        return None
    target = head[len(_SOFT_LINK_OPEN) : -len(_SOFT_LINK_CLOSE)].decode().strip()
    return str((Path(slot) / target).resolve())


def _open_input(slot: str, open_name: str) -> tuple[int, os.stat_result, bytes | None]:
    """Open a logical input once: (fd, its stat, its bytes when small enough to have read).

    A small file is read whole to see whether it is a soft-link file; if it is,
    the target is opened instead (bounded and without following symlinks, as
    ``read_bounded`` does), and its bytes are read by the caller.
    """
    path = os.path.join(slot, open_name)
    fd, st = _open_regular(path)
    if st.st_size > _MAX_LINK_FILE:
        return fd, st, None
    try:
        head = os.read(fd, _MAX_LINK_FILE + 1)
        target = _soft_link_target(slot, head)
    except BaseException:
        os.close(fd)
        raise
    if target is None:
        return fd, st, head
    os.close(fd)
    fd, st = _open_regular(target)
    return fd, st, None


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open a regular file for reading, never through a symlink: (fd, its stat)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise protocol.ProtocolError(
                f"{os.path.basename(path)} is a symbolic link; refused"
            ) from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise protocol.ProtocolError(f"{os.path.basename(path)} is not a regular file; refused")
    return fd, st


def _read_rest(fd: int, st: os.stat_result, head: bytes | None, name: str) -> bytes:
    if st.st_size > _MAX_INPUT_BYTES:
        raise protocol.ProtocolError(
            f"{name} is {st.st_size} bytes, over the {_MAX_INPUT_BYTES}-byte limit"
        )
    if head is not None:
        return head
    chunks = []
    remaining = _MAX_INPUT_BYTES + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    if remaining <= 0:
        raise protocol.ProtocolError(f"{name} grew past the {_MAX_INPUT_BYTES}-byte limit")
    return b"".join(chunks)


def read_input(slot: str, open_name: str) -> bytes:
    """The bytes of a logical input file, opened and read once."""
    fd, st, head = _open_input(slot, open_name)
    try:
        return _read_rest(fd, st, head, open_name)
    finally:
        os.close(fd)


def _read_program(slot: str) -> bytes:
    """The program file's bytes; not read again while the same file stays linked."""
    # The identity of the slot's file is enough even for a soft-link file: it
    # names a physical file, and physical file names are never reused for new bytes.
    # (Anything but a regular file misses the cache and is refused by _open_input.)
    st = os.lstat(os.path.join(slot, protocol.OPEN_PROGRAM))
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _program_file.get(identity) if stat.S_ISREG(st.st_mode) else None
    if cached is not None:
        return cached
    fd, st, head = _open_input(slot, protocol.OPEN_PROGRAM)
    try:
        data = _read_rest(fd, st, head, protocol.OPEN_PROGRAM)
    finally:
        os.close(fd)
    _program_file.clear()
    _program_file[identity] = data
    return data


def write_in_place(path: str, data: bytes) -> None:
    """Write ``data`` as the whole content of ``path``, reusing the file if it exists."""
    fd = os.open(path, _WRITE_FLAGS, 0o666)
    try:
        rewrite_fd(fd, data, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _write_output(slot: str, record: bytes) -> None:
    """Write ``result.pkl``: the file itself, or the target of its soft-link file.

    One open serves both: a small existing file is read to see whether it is a
    soft-link file (in ``<copy_file/>`` mode the file is absent or, on the
    embedded backend, an old record to be rewritten in place).
    """
    path = os.path.join(slot, protocol.OPEN_RESULT)
    fd = os.open(path, _RDWR_FLAGS, 0o666)
    try:
        # What the read returns is the size, unless the file is longer (O_NONBLOCK:
        # a FIFO planted there fails the write instead of blocking the runner).
        head = os.read(fd, _MAX_LINK_FILE + 1)
        if len(head) > _MAX_LINK_FILE:
            target, size = None, os.fstat(fd).st_size
        else:
            target, size = _soft_link_target(slot, head) if head else None, len(head)
        if target is None:
            rewrite_fd(fd, record, size)
            return
    finally:
        os.close(fd)
    write_in_place(target, record)


def write_result(slot: str, record: bytes) -> None:
    """Write the record under the output's open name, then ``boinc_finish_called``.

    Raises:
        OSError: either could not be written (a full disk, most likely).
    """
    _write_output(slot, record)
    write_in_place(os.path.join(slot, protocol.FINISH_FILE), b"0\n")


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
