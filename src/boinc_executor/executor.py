"""``BoincExecutor``: a ``concurrent.futures.Executor`` whose workers are BOINC volunteers.

This module is the front end: argument checking, opening (or replaying) the
batch directory, and turning ``submit``/``map`` calls into journaled jobs with
plain ``Future``s. Everything after that (bulk hand-over to the backend,
reading records from ``new/``, resolving futures) belongs to the collector
thread in :mod:`boinc_executor.collector`; the engines behind it are in
:mod:`boinc_executor.backends.base`.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import itertools
import logging
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import protocol
from .backends.base import Backend, BackendEvents, JobState, load_backend
from .batch import BatchDir, Checkpoint, JournalEntry
from .batchview import BatchView
from .collector import Collector, Job
from .config import JobParams, resolve_project_dir
from .errors import BatchError, BatchMismatchError, BatchNotFoundError, ConfigError
from .protocol.decoding import TypePolicy

if TYPE_CHECKING:
    from .progress import Progress

__all__ = ["BoincExecutor"]

logger = logging.getLogger("boinc_executor")
T = TypeVar("T")
ENV_BATCH_DIR = "BOINC_EXECUTOR_BATCH_DIR"
_EXIT_FLUSH_SECONDS = 120.0


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
        self._programs: dict[int, tuple[Callable[..., Any], str, str, bytes]] = {}
        self._resumed: list[Future[Any]] = []
        self._view: BatchView | None = None
        if self._project_dir is None:
            _announce_local()
        self._open_batch(batch_dir, name or _script_name(), prefix)
        self._collector.start()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ opening

    def _open_batch(self, batch_dir: str | os.PathLike[str] | None, name: str, prefix: str) -> None:
        explicit = batch_dir if batch_dir is not None else os.environ.get(ENV_BATCH_DIR) or None
        backend = self._backend
        if explicit is None:
            batch_id, path = backend.create_batch(name, None)
        else:
            path = Path(explicit).expanduser()
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
            collector = Collector(
                batch,
                checkpoint,
                backend,
                params=self._params,
                policy=self._policy,
                max_result_bytes=self._max_result_bytes,
                remove_when_complete=explicit is None,
            )
            backend.attach(
                batch, checkpoint, BackendEvents(collector.job_started, collector.wake.set)
            )
        except BaseException:
            batch.close()
            raise
        self._batch = batch
        self._checkpoint = checkpoint
        self._collector = collector
        if collector.journal:
            logger.info(
                "replaying batch %d in %s: %d jobs journaled, %d handled",
                checkpoint.batch_id,
                batch.path,
                len(collector.journal),
                collector.handled_at_start,
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
        collector = self._collector
        journal = collector.journal
        for index in sorted(journal):
            entry = journal[index]
            futures: list[Future[Any]] = [Future() for _ in range(entry.n)]
            collector.register(Job(collector, entry.job, entry.i, entry.call, futures), entry)
            self._resumed.extend(futures)
        with collector.lock:
            collector.next_job = max(journal, default=-1) + 1
            collector.next_call = max((e.call + e.n for e in journal.values()), default=0)

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
        pending = deque(self._submit_chunk(fn, c) for c in window)
        more = chunks if buffersize is not None else None
        return self._map_results(fn, pending, more, end_time)

    def _map_results(
        self,
        fn: Callable[..., T],
        pending: deque[Future[list[tuple[bool, Any]]]],
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
                            pending.append(ex._submit_chunk(fn, args))
                    del ex
                    timeout = None if end_time is None else end_time - time.monotonic()
                    for ok, value in _result_or_cancel(chunk, timeout):
                        if not ok:
                            raise value
                        yield value
                    del chunk
            finally:
                for chunk in pending:
                    chunk.cancel()

        return results()

    def output(self, future: Future[Any]) -> protocol.TaskOutput:
        """What the call behind ``future`` printed on its volunteer (its captured stdout/stderr).

        Each stream keeps the call's last ``protocol.OUTPUT_CHARS`` (65,536) characters;
        a ``map`` chunk's single job shares ``protocol.JOB_OUTPUT_CHARS`` per stream
        among its calls (see ``docs/user-guide.md``). Kept while the future is alive.

        Raises:
            ValueError: the future is not done, or has no record of this executor
                (cancelled, failed before it was submitted, or from another executor).
        """
        found = self._collector.output(future) if future.done() else None
        if found is None:
            raise ValueError(
                "no captured output for this future: it is not done, was cancelled or never "
                "submitted, or belongs to another executor; for a map call, use "
                "boinc_executor.task_output(batch_dir, call_index)"
            )
        return found

    def progress(self) -> Progress:
        """The batch's calls by state: total, queued, running, done, failed, cancelled.

        The same on every backend: it reads the journal and the records' headers in
        the batch directory (records are read once; a per-call failure inside a job
        that ran is found with the allow-list decoder) and asks the collector which
        jobs run now; on BOINC, ``stuck`` says why the batch does not move, if it does
        not. ``boinc_executor.progress.show_progress`` draws it as a bar.
        """
        collector = self._collector
        with collector.lock:  # the job table is the collector's; read it under its lock
            running = [n for n, j in collector._jobs.items() if j.state is JobState.RUNNING]
        if self._view is None:
            self._view = BatchView(self._batch.path, policy=self._policy)
        counts = self._view.progress(running)
        backend_progress = getattr(self._backend, "progress", None)
        if backend_progress is None:
            return counts
        # BOINC: the database also says whether a daemon leaves the batch waiting.
        return dataclasses.replace(counts, stuck=backend_progress().stuck)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every call submitted so far is journaled and handed to the backend.

        After it returns True, killing the script loses nothing: a re-run or
        :meth:`resume` finds every call. Useful on BOINC before a script exits
        without waiting for results.

        Args:
            timeout: seconds to wait at most (None: no limit).

        Returns:
            False if the timeout passed first.
        """
        return self._collector.wait_handed_over(timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what has not started; optionally wait.

        Args:
            wait: block until every job that was not cancelled has its result.
            cancel_futures: cancel every future whose job has not started.
        """
        self._collector.stop(wait, cancel_futures=cancel_futures)

    # ------------------------------------------------------------------ submission

    def _program(self, fn: Callable[..., Any]) -> tuple[str, str, bytes]:
        """The program file for ``fn``: (physical name, identity, bytes), pickled once."""
        cached = self._programs.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2], cached[3]
        data = protocol.encode_program(fn, self._policy)
        name = protocol.program_file_name(self._checkpoint.prefix, data)
        identity = protocol.program_identity(data)
        if len(self._programs) >= 64:
            self._programs.pop(next(iter(self._programs)))
        self._programs[id(fn)] = (fn, name, identity, data)  # holds fn: its id stays unique
        return name, identity, data

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]
    ) -> Future[list[tuple[bool, Any]]]:
        """One ``map`` job: its single future resolves to the calls' outcomes."""
        return self._submit_calls(fn, [(args, {}) for args in chunk], chunk=True)[0]

    def _submit_calls(
        self,
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        chunk: bool = False,
    ) -> list[Future[Any]]:
        collector = self._collector
        index, call = collector.allocate(len(calls))
        name = protocol.job_name(self._checkpoint.prefix, self.batch_id, index)
        futures: list[Future[Any]] = [Future() for _ in range(1 if chunk else len(calls))]
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
        journaled = collector.journal.get(index)
        if journaled is not None and (journaled.digest, journaled.n) != (entry.digest, entry.n):
            raise BatchMismatchError(
                f"call {call} (job {name}) differs from the call journaled at that index in "
                f"{self.batch_dir}: the script's inputs changed since the batch was started; "
                "restore them, or run the new inputs with a new batch_dir"
            )
        job = Job(collector, name, index, call, futures, n=len(calls) if chunk else None)
        if journaled is not None:
            collector.register(job, journaled)
        else:
            collector.add(job, entry, program, data)
        return futures


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
        # Locally, like ProcessPoolExecutor, finish the work. On BOINC the jobs keep
        # running on volunteers, so only make sure every call is handed over.
        local = executor.backend == "local"
        executor.shutdown(wait=local)
        if not local and not executor.flush(timeout=_EXIT_FLUSH_SECONDS):
            logger.warning(
                "exiting before every call of batch %d was handed to BOINC; run the script "
                "again (or BoincExecutor.resume(%d)) to submit the rest",
                executor.batch_id,
                executor.batch_id,
            )
