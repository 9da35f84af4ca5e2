"""``BoincExecutor``: a ``concurrent.futures.Executor`` whose workers are BOINC volunteers.

Data flow::

    submit/map ──▶ _Job (plain Futures, one per call) ──▶ buffer
                                                          │  collector thread:
                                                          ▼
                         stage inputs ─▶ journal (batch.py) ─▶ backend.submit (bulk)
                                                                      │
    futures ◀── resolve ◀── decode (protocol + decoding) ◀── BATCH_DIR/new/<job>.<tag>.result
                                      │
                                      └── move to old/ (handled) or quarantine/ (refused)

One thread, the collector, does everything that touches the batch directory or
the backend after ``submit`` returns: it flushes buffered jobs in bulk (journal
first, then the backend), scans ``new/``, resolves futures and hands records
over to ``old/``. Callers' threads only pickle their calls, so an unpicklable
call fails at once and the journal's digests match on replay.

Replay: the journal of a re-opened batch directory says which job indexes were
handed over. A re-submitted call whose index and digest match its journal line
is not handed over again unless the backend lacks it; its record is read from
``old/`` or ``new/`` when it has one.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import os
import shutil
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

from . import protocol
from .backend import Backend, BackendEvents, JobState, load_backend
from .batch import BatchDir, Checkpoint, JournalEntry
from .config import JobParams, resolve_project_dir
from .decoding import TypePolicy
from .errors import (
    BatchError,
    BatchMismatchError,
    BatchNotFoundError,
    BoincExecutorError,
    ConfigError,
    ResultDecodeError,
    rebuild_exception,
)

__all__ = ["BoincExecutor"]

logger = logging.getLogger("boinc_executor")
T = TypeVar("T")
ENV_BATCH_DIR = "BOINC_EXECUTOR_BATCH_DIR"


class _Job:
    """One job: its name, its calls' futures, and where it is.

    It is also the done-callback of its futures, so cancelling a future reaches
    the executor without a closure per future.
    """

    __slots__ = ("call", "executor", "futures", "index", "name", "state")

    def __init__(
        self, executor: BoincExecutor, name: str, index: int, call: int, futures: list[Future[Any]]
    ) -> None:
        self.executor = executor
        self.name = name
        self.index = index
        self.call = call
        self.futures = futures
        self.state = JobState.PENDING

    def __call__(self, future: Future[Any]) -> None:
        if future.cancelled():
            self.executor._future_cancelled(self, future)


def _batched(iterable: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _result_or_cancel(fut: Future[T], timeout: float | None = None) -> T:
    try:
        return fut.result(timeout)
    finally:
        fut.cancel()


class BoincExecutor(Executor):
    """Run calls as BOINC jobs, or on local worker processes when no project is configured.

    Args:
        max_workers: local worker processes (embedded backend only; default CPU count).
        project_dir: root of a BOINC project; default ``$PYBOINC_DIR``; neither
            means the embedded local backend.
        batch_dir: the batch directory. Re-using one replays its batch: calls
            already journaled are not submitted again. Default
            ``$BOINC_EXECUTOR_BATCH_DIR``, else a fresh directory that is removed
            after a clean, complete shutdown.
        name: a label for the batch (default: the script's name).
        prefix: job-name prefix (``<prefix>_<batch_id>_<index>``).
        job_params: BOINC work-unit parameters for this batch's jobs.
        trusted_types: extra classes (or ``"module.QualName"`` strings) results may contain.
        trust_results: decode results with plain ``pickle`` (closed networks only).
        max_result_bytes: records larger than this are refused unread.

    Raises:
        ConfigError: a bad argument or project configuration.
        BatchError: the batch directory is unusable or locked by another executor.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        project_dir: str | os.PathLike[str] | None = None,
        batch_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        prefix: str = "pyb",
        job_params: JobParams | None = None,
        trusted_types: Iterable[type | str] = (),
        trust_results: bool = False,
        max_result_bytes: int = protocol.DEFAULT_MAX_RESULT_BYTES,
        _backend: Backend | None = None,
    ) -> None:
        try:
            protocol.check_prefix(prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(max_result_bytes, int) or max_result_bytes <= 0:
            raise ConfigError(
                f"max_result_bytes must be a positive integer, got {max_result_bytes!r}"
            )
        if job_params is not None and not isinstance(job_params, JobParams):
            raise ConfigError("job_params must be a boinc_executor.JobParams")
        self._project_dir = resolve_project_dir(project_dir)
        self._backend = _backend or load_backend(self._project_dir, max_workers=max_workers)
        self._params = job_params or JobParams()
        self._policy = TypePolicy(trusted_types, trust_all=trust_results)
        self._max_result_bytes = max_result_bytes
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._shutdown = False
        self._jobs: dict[str, _Job] = {}
        self._buffer: list[tuple[_Job, JournalEntry, bytes | None, bytes]] = []
        self._buffered_since = 0.0
        self._resubmit: list[JournalEntry] = []
        self._to_cancel: list[str] = []
        self._replay: deque[tuple[str, Path]] = deque()
        self._programs: dict[int, tuple[Callable[..., Any], str, str, bytes]] = {}
        self._staged_programs: set[str] = set()
        self._next_job = 0
        self._next_call = 0
        self._resumed: list[Future[Any]] = []
        if self._project_dir is None:
            _announce_local()
        self._open_batch(batch_dir, name or _script_name(), prefix)
        self._thread = threading.Thread(
            target=self._collect, name=f"boinc-executor-collector-{self.batch_id}", daemon=True
        )
        self._thread.start()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ opening

    def _open_batch(self, batch_dir: str | os.PathLike[str] | None, name: str, prefix: str) -> None:
        explicit = batch_dir if batch_dir is not None else os.environ.get(ENV_BATCH_DIR) or None
        backend = self._backend
        if explicit is None:
            batch_id, path = backend.create_batch(name, None)
            self._auto_dir = True
        else:
            path = Path(explicit).expanduser()
            self._auto_dir = False
        batch = BatchDir(path)
        try:
            checkpoint = batch.read_checkpoint()
            if checkpoint is None:
                if explicit is not None:
                    batch_id, _ = backend.create_batch(name, batch.path)
                project = str(self._project_dir) if self._project_dir else None
                checkpoint = Checkpoint(batch_id, backend.kind, prefix, project, time.time())
                batch.write_checkpoint(checkpoint)
            elif checkpoint.backend != backend.kind:
                raise ConfigError(
                    f"{batch.path} holds a {checkpoint.backend} batch, but this executor runs on "
                    f"the {backend.kind} backend; "
                    + (
                        f"set project_dir={checkpoint.project_dir!r}"
                        if checkpoint.project_dir
                        else "unset project_dir and PYBOINC_DIR"
                    )
                    + ", or use another batch_dir"
                )
            self._journal = batch.read_journal()
            self._handled = batch.handled_records()
            self._early: dict[str, str] = {}
            for entry in batch.scan_new():
                parsed = protocol.parse_record_name(entry.name)
                if parsed is not None:
                    self._early.setdefault(parsed[0], entry.name)
            backend.attach(batch, checkpoint, BackendEvents(self._job_started, self._wake.set))
        except BaseException:
            batch.close()
            raise
        self._batch = batch
        self._checkpoint = checkpoint
        if self._journal:
            logger.info(
                "replaying batch %d in %s: %d jobs journaled, %d handled",
                checkpoint.batch_id,
                batch.path,
                len(self._journal),
                len(self._handled),
            )
        else:
            logger.info(
                "batch %d in %s (reattach with BoincExecutor.resume(%d))",
                checkpoint.batch_id,
                batch.path,
                checkpoint.batch_id,
            )

    @classmethod
    def resume(
        cls,
        batch_id: int,
        *,
        project_dir: str | os.PathLike[str] | None = None,
        max_workers: int | None = None,
        **kwargs: Any,
    ) -> BoincExecutor:
        """Reattach to an existing batch from any directory.

        Every journaled call gets a future again (see :attr:`futures`); jobs that
        have results are resolved from them, the rest are handed to the backend
        if it does not already have them.

        Args:
            batch_id: the batch's ID, as logged when it was created.
            project_dir: the BOINC project (default ``$PYBOINC_DIR``; none: local).
            max_workers: local worker processes.
            **kwargs: other :class:`BoincExecutor` options (``trusted_types``, ...).

        Raises:
            BatchNotFoundError: no such batch, or its directory is gone.
        """
        if not isinstance(batch_id, int) or isinstance(batch_id, bool) or batch_id <= 0:
            raise BatchNotFoundError(f"batch IDs are positive integers, got {batch_id!r}")
        backend = load_backend(resolve_project_dir(project_dir), max_workers=max_workers)
        path = backend.locate_batch(batch_id)
        executor = cls(project_dir=project_dir, batch_dir=path, _backend=backend, **kwargs)
        if executor.batch_id != batch_id:
            executor.shutdown(wait=False)
            raise BatchError(f"{path} holds batch {executor.batch_id}, not batch {batch_id}")
        executor._resume_journaled()
        return executor

    def _resume_journaled(self) -> None:
        for index in sorted(self._journal):
            entry = self._journal[index]
            futures: list[Future[Any]] = [Future() for _ in range(entry.n)]
            self._register(_Job(self, entry.job, entry.i, entry.call, futures), entry)
            self._resumed.extend(futures)
        with self._lock:
            self._next_job = max(self._journal, default=-1) + 1
            self._next_call = max((e.call + e.n for e in self._journal.values()), default=0)
        self._wake.set()

    # ------------------------------------------------------------------ public API

    @property
    def batch_id(self) -> int:
        """The persisted ID of this executor's batch."""
        return self._checkpoint.batch_id

    @property
    def batch_dir(self) -> Path:
        """The batch directory."""
        return self._batch.path

    @property
    def backend(self) -> str:
        """``"local"`` or ``"boinc"``."""
        return self._backend.kind

    @property
    def futures(self) -> list[Future[Any]]:
        """After :meth:`resume`: the journaled calls' futures, in submission order."""
        return list(self._resumed)

    def results(self, timeout: float | None = None) -> Iterator[Any]:
        """After :meth:`resume`: the journaled calls' results, in submission order."""
        end = None if timeout is None else time.monotonic() + timeout
        for fut in self._resumed:
            yield fut.result(None if end is None else max(0.0, end - time.monotonic()))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` as one job; returns its future."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}")
        return self._submit_calls(fn, [(args, kwargs)])[0]

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Ordered results of ``fn`` over ``zip(*iterables)``, like ``ProcessPoolExecutor.map``.

        Args:
            fn: the function.
            *iterables: its arguments.
            timeout: seconds, from this call, after which ``next()`` raises ``TimeoutError``.
            chunksize: calls per job (default: the backend's; 1 locally).
            buffersize: at most this many jobs in flight; the next is submitted as a
                result is consumed, so an unbounded input runs in bounded memory.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__}")
        if chunksize is None:
            chunksize = self._backend.default_chunksize
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        chunks = _batched(zip(*iterables, strict=False), chunksize)
        window = chunks if buffersize is None else itertools.islice(chunks, buffersize)
        pending = deque(self._submit_calls(fn, [(args, {}) for args in c]) for c in window)
        more = chunks if buffersize is not None else None
        return self._map_results(fn, pending, more, end_time)

    def _map_results(
        self,
        fn: Callable[..., T],
        pending: deque[list[Future[T]]],
        more: Iterator[list[tuple[Any, ...]]] | None,
        end_time: float | None,
    ) -> Iterator[T]:
        executor = weakref.ref(self)
        del self  # the generator must not keep the executor alive

        def results() -> Iterator[T]:
            try:
                while pending:
                    chunk = pending.popleft()
                    ex = executor()
                    if more is not None and ex is not None:
                        args = next(more, None)
                        if args is not None:
                            pending.append(ex._submit_calls(fn, [(a, {}) for a in args]))
                    del ex
                    for fut in chunk:
                        if end_time is None:
                            yield _result_or_cancel(fut)
                        else:
                            yield _result_or_cancel(fut, end_time - time.monotonic())
                    del chunk
            finally:
                for chunk in pending:
                    for fut in chunk:
                        fut.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what has not started; optionally wait.

        Args:
            wait: block until every job that was not cancelled has its result.
            cancel_futures: cancel every future whose job has not started.
        """
        with self._lock:
            self._shutdown = True
            futures = (
                [f for job in self._jobs.values() for f in job.futures] if cancel_futures else []
            )
        for fut in futures:
            fut.cancel()
        self._wake.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    # ------------------------------------------------------------------ submission

    def _program(self, fn: Callable[..., Any]) -> tuple[str, str, bytes]:
        """The program file for ``fn``: (physical name, identity, bytes), pickled once."""
        cached = self._programs.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2], cached[3]
        data = protocol.encode_program(fn)
        name = protocol.program_file_name(self._checkpoint.prefix, data)
        identity = protocol.program_identity(data)
        if len(self._programs) >= 64:
            self._programs.pop(next(iter(self._programs)))
        self._programs[id(fn)] = (fn, name, identity, data)  # holds fn: its id stays unique
        return name, identity, data

    def _submit_calls(
        self, fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[Future[Any]]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            index, call = self._next_job, self._next_call
            self._next_job += 1
            self._next_call += len(calls)
        name = protocol.job_name(self._checkpoint.prefix, self.batch_id, index)
        futures: list[Future[Any]] = [Future() for _ in calls]
        try:
            program_name, identity, program = self._program(fn)
            data = protocol.encode_data(name, calls)
        except Exception as exc:
            error = TypeError(
                f"cannot send {getattr(fn, '__qualname__', fn)!r} or its arguments to a volunteer: "
                f"they cannot be pickled ({type(exc).__name__}: {exc}); use module-level "
                "functions and plain data, or make the objects picklable"
            )
            for fut in futures:
                fut.set_running_or_notify_cancel()
                fut.set_exception(error)
            return futures
        entry = JournalEntry(
            job=name,
            i=index,
            call=call,
            n=len(calls),
            digest=protocol.input_digest(identity, data),
            program=program_name,
            data=protocol.data_file_name(name),
        )
        journaled = self._journal.get(index)
        if journaled is not None and (journaled.digest, journaled.n) != (entry.digest, entry.n):
            raise BatchMismatchError(
                f"call {call} (job {name}) differs from the call journaled at that index in "
                f"{self.batch_dir}: the script's inputs changed since the batch was started; "
                "restore them, or run the new inputs with a new batch_dir"
            )
        job = _Job(self, name, index, call, futures)
        if journaled is not None:
            self._register(job, journaled)
        else:
            for fut in futures:
                fut.add_done_callback(job)
            with self._lock:
                self._jobs[name] = job
                if not self._buffer:
                    self._buffered_since = time.monotonic()
                new_program = program_name not in self._staged_programs
                self._staged_programs.add(program_name)
                self._buffer.append((job, entry, program if new_program else None, data))
        self._wake.set()
        return futures

    def _register(self, job: _Job, entry: JournalEntry) -> None:
        """Track a journaled job again: resolve it from its record, or ask the backend for it."""
        for fut in job.futures:
            fut.add_done_callback(job)
        job.state = JobState.SUBMITTED
        with self._lock:
            self._jobs[job.name] = job
            if job.name in self._handled:
                self._replay.append((job.name, self._batch.old_dir / self._handled.pop(job.name)))
            elif self._early.pop(job.name, None) is None:
                self._resubmit.append(entry)
            # else: its record waits in new/, where the next scan claims it

    def _flush(self, force: bool) -> None:
        """Stage, journal and hand over buffered jobs, in bulk."""
        backend = self._backend
        with self._lock:
            due = force or time.monotonic() - self._buffered_since >= backend.submit_delay
            if not (self._buffer and due) and not self._resubmit:
                return
            buffer, self._buffer = (self._buffer, []) if due else ([], self._buffer)
            resubmit, self._resubmit = self._resubmit, []
        live = [item for item in buffer if item[0].state is JobState.PENDING]
        try:
            for _job, entry, program, data in live:
                if program is not None:
                    backend.stage(entry.program, program, shared=True)
                backend.stage(entry.data, data, shared=False)
            entries = [entry for _, entry, _, _ in live]
            if entries:
                self._batch.append_journal(entries)
            with self._lock:
                for job, *_ in live:
                    if job.state is JobState.PENDING:
                        job.state = JobState.SUBMITTED
            if entries or resubmit:
                backend.submit(resubmit + entries, self._params)
        except (BoincExecutorError, OSError) as exc:
            logger.error("submitting %d jobs failed: %s", len(live) + len(resubmit), exc)
            failed = [job for job, *_ in live]
            with self._lock:
                failed += [self._jobs[e.job] for e in resubmit if e.job in self._jobs]
            for job in failed:
                self._resolve(job, error=_submission_error(exc, self))

    # ------------------------------------------------------------------ collection

    def _collect(self) -> None:
        """The collector thread: flush submissions, scan new/, resolve futures."""
        last_poll = 0.0
        backend = self._backend
        timeout = backend.poll_interval
        while True:
            self._wake.wait(timeout)
            self._wake.clear()
            with self._lock:
                stopping = self._shutdown
            try:
                self._flush(force=stopping)
                self._cancel_pending()
                self._replay_records()
                self._scan()
                if time.monotonic() - last_poll >= backend.poll_interval:
                    last_poll = time.monotonic()
                    backend.poll()
            except Exception:  # keep collecting: one bad step must not strand every future
                logger.exception("boinc-executor collector step failed; retrying")
                time.sleep(min(backend.poll_interval, 1.0))
            with self._lock:
                if self._shutdown and not self._jobs and not self._buffer:
                    break
                timeout = backend.poll_interval
                if self._buffer:  # not yet due: come back when it is
                    age = time.monotonic() - self._buffered_since
                    timeout = max(0.0, min(timeout, backend.submit_delay - age))
        self._finish()

    def _scan(self) -> None:
        batch = self._batch
        for entry in batch.scan_new():
            name = entry.name
            parsed = protocol.parse_record_name(name)
            if parsed is None:
                self._quarantine(name, "not a record file name")
                continue
            if not entry.is_file(follow_symlinks=False):
                self._quarantine(name, "not a regular file (symlink, FIFO or directory)")
                continue
            job_name = parsed[0]
            with self._lock:
                job = self._jobs.get(job_name)
                if job is not None and job.state is JobState.PENDING:
                    continue  # only a replayed job can have a record before it is handed over
            if job is not None:
                self._read_record(job, batch.new_dir / name, name)
                continue
            self._unclaimed_record(job_name, name)

    def _unclaimed_record(self, job_name: str, name: str) -> None:
        """A record in ``new/`` for a job no future waits on: keep, hand over, or refuse it."""
        prefix, batch_id, index = protocol.parse_job_name(job_name) or ("", -1, -1)
        if (prefix, batch_id) != (self._checkpoint.prefix, self.batch_id):
            self._quarantine(name, f"record of job {job_name}, which belongs to another batch")
            return
        with self._lock:
            awaiting_replay = index in self._journal and index >= self._next_job
            if awaiting_replay:
                first = self._early.setdefault(job_name, name)
        if awaiting_replay:
            if first != name:
                self._batch.mark_handled(name)  # a duplicate delivery
            return  # the re-run has not re-submitted this job yet; it will claim the record
        if index < self._next_job:
            self._batch.mark_handled(name)  # a late duplicate, or a cancelled job's record
        else:
            self._quarantine(name, f"record of job {job_name}, which this batch never created")

    def _replay_records(self) -> None:
        """Resolve re-submitted jobs from the records they already have in ``old/``."""
        while True:
            with self._lock:
                if not self._replay:
                    return
                job_name, path = self._replay.popleft()
                job = self._jobs.get(job_name)
            if job is not None:
                self._read_record(job, path, None)

    def _read_record(self, job: _Job, path: Path, new_name: str | None) -> None:
        """Decode one record and resolve its job; ``new_name`` set when it sits in ``new/``."""
        n = len(job.futures)
        try:
            data = protocol.read_bounded(path, self._max_result_bytes)
            record = protocol.decode_result(data, self._policy, expect_job=job.name, expect_calls=n)
        except FileNotFoundError:
            return
        except (BoincExecutorError, OSError) as exc:
            error = ResultDecodeError(
                f"the result record {path.name} for job {job.name} was refused: {exc}. "
                f"It is kept in {self._batch.old_dir}; no code from it was run"
            )
            self._resolve(job, error=error)
            if new_name is not None:
                self._batch.mark_handled(new_name)
            return
        if record.ok:
            self._resolve(job, outcomes=record.outcomes)
        else:
            assert record.error is not None
            self._resolve(job, error=rebuild_exception(record.error))
        if new_name is not None:
            self._batch.mark_handled(new_name)

    def _resolve(
        self,
        job: _Job,
        *,
        outcomes: list[tuple[bool, Any]] | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Resolve every future of a job exactly once (futures already done are skipped)."""
        with self._lock:
            if self._jobs.get(job.name) is not job:
                return
            del self._jobs[job.name]
            job.state = JobState.DONE
            running = [
                not fut.done() and (fut.running() or fut.set_running_or_notify_cancel())
                for fut in job.futures
            ]
        for i, fut in enumerate(job.futures):
            if not running[i]:
                continue
            if outcomes is None:
                fut.set_exception(error)
            else:
                ok, value = outcomes[i]
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(rebuild_exception(value))

    # ------------------------------------------------------------------ events

    def _job_started(self, job_name: str) -> None:
        """Backend event: the job runs now, so its futures can no longer be cancelled."""
        with self._lock:
            job = self._jobs.get(job_name)
            if job is None or not job.state.can_become(JobState.RUNNING):
                return
            job.state = JobState.RUNNING
            for fut in job.futures:
                if not fut.done() and not fut.running():
                    fut.set_running_or_notify_cancel()

    def _future_cancelled(self, job: _Job, future: Future[Any]) -> None:
        """Done-callback of a cancelled future: notify waiters, cancel the job if all are."""
        with contextlib.suppress(RuntimeError):  # already notified
            future.set_running_or_notify_cancel()
        with self._lock:
            if not all(f.cancelled() for f in job.futures):
                return
            if self._jobs.get(job.name) is not job or not job.state.can_become(JobState.CANCELLED):
                return
            was_submitted = job.state is JobState.SUBMITTED
            job.state = JobState.CANCELLED
            del self._jobs[job.name]
            if was_submitted:
                self._to_cancel.append(job.name)
        self._wake.set()

    def _cancel_pending(self) -> None:
        with self._lock:
            names, self._to_cancel = self._to_cancel, []
        if names:
            self._backend.cancel(names)

    # ------------------------------------------------------------------ teardown

    def _finish(self) -> None:
        complete = not self._jobs and len(self._journal) <= self._next_job
        try:
            self._backend.close(complete=complete)
        except Exception:
            logger.exception("closing the %s backend failed", self._backend.kind)
        self._batch.close()
        if self._auto_dir and complete:
            shutil.rmtree(self._batch.path, ignore_errors=True)

    def _quarantine(self, name: str, reason: str) -> None:
        try:
            target = self._batch.quarantine(name, reason)
        except FileNotFoundError:
            return
        logger.warning(
            "refused %s in %s: %s (moved to %s)", name, self._batch.new_dir, reason, target
        )


def _submission_error(exc: BaseException, executor: BoincExecutor) -> BaseException:
    from .errors import SubmissionError

    return SubmissionError(
        f"could not hand the job to the {executor.backend} backend: {exc}. The job is journaled "
        f"in {executor.batch_dir}; fix the cause and run again, or "
        f"BoincExecutor.resume({executor.batch_id})"
    )


@functools.lru_cache(maxsize=1)
def _announce_local() -> None:
    """Say once per process which backend runs the jobs, so nobody wonders where they went."""
    logger.info(
        "no BOINC project configured (project_dir and PYBOINC_DIR unset): "
        "running jobs on the embedded local backend"
    )


def _script_name() -> str:
    main = sys.argv[0] if sys.argv and sys.argv[0] else "interactive"
    return Path(main).stem or "interactive"


def _shutdown_at_exit(ref: weakref.ReferenceType[BoincExecutor]) -> None:
    executor = ref()
    if executor is not None:
        # Locally, like ProcessPoolExecutor, finish the work; on BOINC the jobs are
        # journaled and keep running on volunteers, so do not block the exit.
        executor.shutdown(wait=executor.backend == "local")
