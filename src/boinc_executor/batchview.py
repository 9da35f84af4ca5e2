"""A read-only view of a batch directory, for whoever did not create it.

The command line (and ``BoincExecutor.progress()``) looks at batches that another
process may be running. Nothing here takes the batch lock, writes into the
directory or runs code from a record: checkpoint and journal are JSON, record
headers are JSON (job, status, host, stdout/stderr tails, job-level error), and a
record's per-call outcomes are only ever decoded with the allow-list decoder
(:func:`boinc_executor.protocol.decoding.safe_loads`). Records are immutable once
delivered, so what was read of one is cached by file name.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import protocol
from .errors import BatchError, BatchNotFoundError, BoincExecutorError
from .progress import Progress
from .protocol.decoding import TypePolicy
from .protocol.pack import KIND_RECORD, RecordPack

if TYPE_CHECKING:
    from .batch import JournalEntry

__all__ = ["BatchView", "CallError", "JobRecord", "Owner"]

_WU_CANCELLED = 16  # workunit.error_mask bit (boinc-facts §2)


@dataclass(frozen=True)
class JobRecord:
    """What a record's header says about its job.

    Attributes:
        job: the job name.
        name: the record's file name.
        path: where the record is: in ``new/`` or ``old/`` (a release before the
            handled-records pack), or ``handled.pack/<name>`` for a packed one.
        ok: whether the job ran (per-call outcomes are in the payload).
        host: where it ran.
        stdout: tail of the job's captured standard output.
        stderr: tail of its captured standard error.
        error: the job-level failure, when not ``ok``.
    """

    job: str
    name: str
    path: Path
    ok: bool
    host: str = ""
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled before it ran (BOINC's error_mask bit 16)."""
        if self.error is None or self.error.get("type") != "WorkunitError":
            return False
        mask = self.error.get("error_mask")
        return isinstance(mask, int) and bool(mask & _WU_CANCELLED)


@dataclass(frozen=True)
class CallError:
    """A failed call, as ``boinc-executor errors`` lists it.

    Attributes:
        call: the call's index in the batch (submission order).
        job: the job that carried it.
        type: the exception's type name (qualified by module when not built-in).
        message: ``str()`` of the exception.
        host: where it ran ("" when it never ran).
        traceback: the remote traceback text ("" when there is none).
    """

    call: int
    job: str
    type: str
    message: str
    host: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class Owner:
    """The executor that holds a batch directory open, from its ``.lock.owner`` note.

    Attributes:
        text: the note, e.g. ``pid 123 on host since ...``.
        pid: the process ID, if the note names one.
        host: the host name, if the note names one.
    """

    text: str
    pid: int | None = None
    host: str = ""

    @property
    def alive(self) -> bool:
        """Whether that process still runs (assumed so for another host)."""
        if self.pid is None or self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass
class _Cache:
    headers: dict[str, JobRecord] = field(default_factory=dict)
    outcomes: dict[str, list[tuple[bool, Any]] | None] = field(default_factory=dict)
    packed: dict[str, bytes] | None = None  # handled.pack/<record name> -> the record


class BatchView:
    """Read a batch directory without locking or changing it.

    Args:
        path: the batch directory.
        policy: the types per-call outcomes may contain when decoded (default:
            the built-in allow-list only).
        max_record_bytes: records larger than this are not read.

    Raises:
        BatchNotFoundError: the directory holds no checkpoint.
        BatchError: the checkpoint is unreadable.
    """

    def __init__(
        self,
        path: Path,
        *,
        policy: TypePolicy | None = None,
        max_record_bytes: int = protocol.DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.path = path
        self.policy = policy or TypePolicy()
        self.max_record_bytes = max_record_bytes
        self._cache = _Cache()
        self.checkpoint = self._read_checkpoint()

    def _read_checkpoint(self) -> dict[str, Any]:
        target = self.path / protocol.CHECKPOINT
        try:
            data = json.loads(target.read_text())
        except FileNotFoundError:
            raise BatchNotFoundError(
                f"{self.path} holds no batch (no {protocol.CHECKPOINT}); it was removed, "
                "or never was a batch directory"
            ) from None
        except (OSError, ValueError) as exc:
            raise BatchError(f"cannot read {target}: {exc}") from exc
        if not isinstance(data, dict) or "batch_id" not in data:
            raise BatchError(f"{target} is not a batch checkpoint")
        return data

    # ------------------------------------------------------------------ who has it

    def owner(self) -> Owner | None:
        """The live executor holding the directory open, or None."""
        try:
            text = (self.path / (protocol.LOCK + ".owner")).read_text().strip()
        except OSError:
            return None
        words = text.split()
        pid = int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else None
        host = words[3] if len(words) > 3 and words[2] == "on" else ""
        owner = Owner(text, pid, host)
        return owner if owner.alive else None

    # ------------------------------------------------------------------ journal and records

    def journal(self) -> dict[int, JournalEntry]:
        """Every journaled job by index; a torn last line (a killed master) is ignored."""
        # Imported here: batch.py needs filelock, and the CLI's setup-project (which
        # imports this module through the parser) must run where only the server
        # side's imports are available.
        from .batch import JournalEntry

        entries: dict[int, JournalEntry] = {}
        try:
            raw = (self.path / protocol.JOURNAL).read_bytes()
        except FileNotFoundError:
            return entries
        except OSError as exc:
            raise BatchError(f"cannot read the journal of {self.path}: {exc}") from exc
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                entry = JournalEntry(**json.loads(line))
            except (ValueError, TypeError) as exc:
                raise BatchError(f"the journal of {self.path} has a corrupt line: {exc}") from exc
            entries[entry.i] = entry
        return entries

    def _packed(self) -> dict[str, bytes]:
        """The handled-records pack's records (read once per :meth:`records` call)."""
        if self._cache.packed is None:
            found: dict[str, bytes] = {}
            try:
                pack = RecordPack(str(self.path / protocol.HANDLED_PACK), writable=False)
            except OSError:
                pack = None
            if pack is not None:
                try:
                    for entry, body in pack.records():
                        if entry.kind == KIND_RECORD:
                            found[str(self.path / protocol.HANDLED_PACK / entry.name)] = body
                except (OSError, BoincExecutorError):
                    pass  # a torn or damaged tail: what was read stands
                finally:
                    pack.close()
            self._cache.packed = found
        return self._cache.packed

    def _read(self, path: Path) -> bytes:
        packed = self._packed().get(str(path))
        return packed if packed is not None else protocol.read_bounded(path, self.max_record_bytes)

    def _record_files(self) -> Iterator[Path]:
        # The pack first, then old/: a job's handled record is the one its future got.
        yield from (Path(key) for key in self._packed())
        for sub in (protocol.OLD, protocol.NEW):
            try:
                names = sorted(os.listdir(self.path / sub))
            except FileNotFoundError:
                continue
            for name in names:
                if not name.startswith("."):
                    yield self.path / sub / name

    def records(self) -> dict[str, JobRecord]:
        """Job name → its record: the first readable one, but a cancellation record wins.

        ``boinc-executor cancel`` resolves the futures of a running script through
        its cancellation records; a worker that ran the job anyway leaves a late
        duplicate, which the script never saw.
        """
        found: dict[str, JobRecord] = {}
        self._cache.packed = None  # the pack grows while a batch runs: read it afresh
        for path in self._record_files():
            parsed = protocol.parse_record_name(path.name)
            if parsed is None:
                continue
            job, tag = parsed
            if job in found and tag != protocol.CANCEL_TAG:
                continue
            record = self._header(path)
            # A record must be of the job its name says: a local worker writes the next
            # record over a handled one's file before renaming it, and a file that is not
            # what its name says is no result of that job (nor of the job it holds).
            if record is not None and record.job == job:
                found[job] = record
        return found

    def _header(self, path: Path) -> JobRecord | None:
        key = f"{path.parent.name}/{path.name}"
        cached = self._cache.headers.get(key)
        if cached is not None:
            return cached
        try:
            data = self._read(path)
            header, _ = protocol.decode_frame(data, protocol.KIND_RESULT)
        except (OSError, BoincExecutorError, RecursionError):
            return None  # moved to old/ meanwhile, refused, or not a record: not a result
        error = header.get("error")
        record = JobRecord(
            job=str(header.get("job", "")),
            name=path.name,
            path=path,
            ok=header.get("status") == "ok",
            host=str(header.get("host", "")),
            stdout=str(header.get("stdout", "")),
            stderr=str(header.get("stderr", "")),
            error=error if isinstance(error, dict) else None,
        )
        if path.parent.name in (protocol.OLD, protocol.HANDLED_PACK):
            self._cache.headers[key] = record
        return record

    def outcomes(self, record: JobRecord, calls: int) -> list[tuple[bool, Any]] | None:
        """The per-call outcomes of a job that ran, decoded with the allow-list decoder.

        Returns:
            ``(True, value)`` or ``(False, error_info)`` per call; None when the
            payload names a type the policy refuses or is not as expected.
        """
        key = str(record.path)
        if key in self._cache.outcomes:
            return self._cache.outcomes[key]
        result: list[tuple[bool, Any]] | None
        try:
            data = self._read(record.path)
            decoded = protocol.decode_result(
                data, self.policy, expect_job=record.job, expect_calls=calls
            )
            result = decoded.outcomes
        except (OSError, BoincExecutorError, RecursionError):
            result = None
        self._cache.outcomes[key] = result
        return result

    # ------------------------------------------------------------------ summaries

    def progress(
        self,
        running: Collection[str] = (),
        failed: Collection[str] = (),
        cancelled: Collection[str] = (),
    ) -> Progress:
        """The batch's calls by state.

        A job's record decides its calls' state. For a job without one, the
        backend's word counts: ``running``, ``failed`` and ``cancelled`` name jobs
        it reports so (a BOINC work unit can fail before any record exists); the
        rest are queued.
        """
        journal = self.journal()
        records = self.records()
        total = n_queued = n_running = n_done = n_failed = n_cancelled = 0
        for entry in journal.values():
            total += entry.n
            record = records.get(entry.job)
            if record is None:
                if entry.job in cancelled:
                    n_cancelled += entry.n
                elif entry.job in failed:
                    n_failed += entry.n
                elif entry.job in running:
                    n_running += entry.n
                else:
                    n_queued += entry.n
            elif record.cancelled:
                n_cancelled += entry.n
            elif not record.ok:
                n_failed += entry.n
            else:
                outcomes = self.outcomes(record, entry.n)
                bad = sum(1 for ok, _ in outcomes if not ok) if outcomes else 0
                n_failed += bad
                n_done += entry.n - bad
        return Progress(total, n_queued, n_running, n_done, n_failed, n_cancelled)

    def entry_for_call(self, call: int) -> JournalEntry | None:
        """The journaled job that carries call number ``call``."""
        for entry in self.journal().values():
            if entry.call <= call < entry.call + entry.n:
                return entry
        return None

    def call_errors(self) -> tuple[list[CallError], list[str]]:
        """Every failed call, in call order, and the jobs whose outcomes could not be decoded."""
        errors: list[CallError] = []
        undecodable: list[str] = []
        records = self.records()
        for entry in sorted(self.journal().values(), key=lambda e: e.call):
            record = records.get(entry.job)
            if record is None:
                continue
            if not record.ok:
                info = record.error or {}
                errors.extend(
                    _call_error(entry.call + k, entry.job, info, record.host)
                    for k in range(entry.n)
                )
                continue
            outcomes = self.outcomes(record, entry.n)
            if outcomes is None:
                undecodable.append(entry.job)
                continue
            for k, (ok, info) in enumerate(outcomes):
                if not ok and isinstance(info, dict):
                    errors.append(_call_error(entry.call + k, entry.job, info, record.host))
        return errors, undecodable


def _call_error(call: int, job: str, info: dict[str, Any], host: str) -> CallError:
    module = str(info.get("module", ""))
    name = str(info.get("type", "Exception"))
    qualified = name if module in ("", "builtins") else f"{module}.{name}"
    return CallError(
        call=call,
        job=job,
        type=qualified,
        message=str(info.get("message", "")),
        host=str(info.get("host", "") or host),
        traceback=str(info.get("traceback", "") or info.get("stderr_tail", "")),
    )


def call_output(view: BatchView, call: int) -> tuple[JournalEntry, JobRecord | None]:
    """The job carrying ``call`` and its record, whose header holds the captured output.

    The runner captures output per job: every call of a ``map`` chunk shares its
    job's stdout and stderr tails.

    Raises:
        BatchError: no journaled job carries that call.
    """
    entry = view.entry_for_call(call)
    if entry is None:
        raise BatchError(f"batch {view.checkpoint.get('batch_id')} has no call {call}")
    return entry, view.records().get(entry.job)
