"""``BoincExecutor``: a ``concurrent.futures.Executor`` whose workers are BOINC volunteers.

This module is the front end: argument checking, opening (or replaying) the
batch directory, and handing ``submit``/``map`` calls to
:mod:`boinc_executor.submission`, which turns them into journaled jobs with
plain ``Future``s. Everything after that (bulk hand-over to the backend,
reading records from ``new/``, resolving futures) belongs to the collector
thread in :mod:`boinc_executor.collector`; the engines behind it are in
:mod:`boinc_executor.backends.base`.

Design note (the batch contract). Which batch an executor opens, and what
happens to it at the end, is :mod:`boinc_executor.lifecycle`; whose default
batch it is, :mod:`boinc_executor.ownership`; what a replay compares,
:mod:`boinc_executor.fingerprint`; retries, :mod:`boinc_executor.replay`; the
interrupt path (``__exit__`` and the exit hook, which tell a ^C, SIGTERM or early
``SystemExit`` from a normal end and then keep the batch),
:mod:`boinc_executor.ending`.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import itertools
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import interrupts, protocol
from .backends.base import Backend, BackendEvents, JobState, load_backend
from .batchview import BatchView
from .collector import Collector
from .config import JobParams, resolve_project_dir
from .ending import ExecutorEnding, shutdown_at_exit
from .errors import BatchError, BatchNotFoundError, ConfigError
from .lifecycle import discard_batch, open_batch, when_finished
from .mapping import batched, map_results
from .protocol.decoding import TypePolicy
from .replay import resume_jobs
from .submission import Submitter

if TYPE_CHECKING:
    from .progress import Progress

__all__ = ["BoincExecutor"]

logger = logging.getLogger("boinc_executor")
T = TypeVar("T")
ENV_BATCH_DIR = "BOINC_EXECUTOR_BATCH_DIR"


class BoincExecutor(ExecutorEnding, Executor):
    """Run calls as BOINC jobs, or on local worker processes when no project is configured.

    Args:
        max_workers: local worker processes (embedded backend only; default CPU count).
        project_dir: root of a BOINC project; default ``$PYBOINC_DIR``; neither
            means the embedded local backend.
        batch_dir: the batch directory. Re-using one replays its batch: calls
            already journaled are not submitted again. Default
            ``$BOINC_EXECUTOR_BATCH_DIR``, else the running script's own batch:
            running the script again after an interruption replays it; once it
            completes and the executor is shut down normally, the next run starts
            fresh (docs/user-guide.md, "Batches, checkpoint and resume").
        name: names the batch, so one script can own several, and an interactive
            session can own one (default: none; the batch is labelled with the
            script's name).
        prefix: job-name prefix (``<prefix>_<batch_id>_<index>``).
        job_params: BOINC work-unit parameters for this batch's jobs.
        trusted_types: extra classes (or ``"module.QualName"`` strings) results may contain.
        trust_results: decode results with plain ``pickle`` (closed networks only).
        max_result_bytes: records larger than this are refused unread.
        retry_failed: when replaying, send a journaled call again (under a new
            job name, with the arguments this run submits) if its record is an
            error or the call raised; every other result is replayed as usual.
        server: a BOINC project's master URL: submit over its web RPCs from any
            machine (default ``$BOINC_EXECUTOR_SERVER`` when no project is set;
            docs/remote.md).
        authenticator: the account key for ``server`` (default
            ``$BOINC_EXECUTOR_AUTHENTICATOR``, else the file named by
            ``$BOINC_EXECUTOR_AUTHENTICATOR_FILE``); never written anywhere.

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
        retry_failed: bool = False,
        server: str | None = None,
        authenticator: str | None = None,
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
        self._project_dir = _project(project_dir, server)
        self._backend = _backend or load_backend(
            self._project_dir, max_workers=max_workers, server=server, authenticator=authenticator
        )
        self._params = job_params or JobParams()
        self._policy = TypePolicy(trusted_types, trust_all=trust_results)
        self._max_result_bytes = max_result_bytes
        self._resumed: list[Future[Any]] = []
        self._view: BatchView | None = None
        if self._backend.kind == "local":
            _announce_local()
        self._kept = False
        interrupts.install_handlers()
        self._open_batch(batch_dir, name, prefix)
        self._submitter = Submitter(
            self._collector,
            self._batch,
            self._checkpoint,
            self._policy,
            max_result_bytes=max_result_bytes,
            retry_failed=retry_failed,
        )
        self._collector.start()
        atexit.register(shutdown_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ opening

    def _open_batch(
        self, batch_dir: str | os.PathLike[str] | None, name: str | None, prefix: str
    ) -> None:
        explicit = batch_dir if batch_dir is not None else os.environ.get(ENV_BATCH_DIR) or None
        backend = self._backend
        opened = open_batch(backend, explicit, name, prefix, self._project_dir)
        batch, checkpoint = opened.batch, opened.checkpoint
        try:
            collector = Collector(
                batch,
                checkpoint,
                backend,
                params=self._params,
                policy=self._policy,
                max_result_bytes=self._max_result_bytes,
                on_finish=when_finished(opened),
            )
            events = BackendEvents(
                collector.job_started,
                collector.request_scan,
                collector.record_delivered,
                collector.job_failed,
            )
            backend.attach(batch, checkpoint, events)
        except BaseException:
            batch.close()
            raise
        self._batch = batch
        self._checkpoint = checkpoint
        self._collector = collector
        self._opened = opened
        owner = f" of {checkpoint.script}" if checkpoint.script else ""
        if checkpoint.name and opened.claim is not None and opened.claim.owner.name:
            owner += f" (name={checkpoint.name!r})"
        if collector.journal:
            logger.info(
                "replaying batch %d%s in %s: %d jobs journaled, %d handled",
                checkpoint.batch_id,
                owner,
                batch.path,
                len(collector.journal),
                collector.handled_at_start,
            )
        else:
            logger.info(
                "batch %d%s in %s (reattach with BoincExecutor.resume(%d))",
                checkpoint.batch_id,
                owner,
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
        retry_failed: bool = False,
        server: str | None = None,
        authenticator: str | None = None,
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
            retry_failed: submit again, under new job names, every job whose
                record is an error or holds a call that raised; every other
                result is kept. A job of a ``map`` chunk is retried whole.
            server: the master URL of a remotely submitted batch (see ``__init__``).
            authenticator: its account key (see ``__init__``).
            **kwargs: other :class:`BoincExecutor` options (``trusted_types``, ...).

        Raises:
            BatchNotFoundError: no such batch, or its directory is gone.
            BatchError: a failed job's staged input is gone (with ``retry_failed``).
        """
        _check_batch_id(batch_id)
        backend = load_backend(
            _project(project_dir, server),
            max_workers=max_workers,
            server=server,
            authenticator=authenticator,
        )
        path = backend.locate_batch(batch_id)
        executor = cls(
            project_dir=project_dir, batch_dir=path, server=server, _backend=backend, **kwargs
        )
        if executor.batch_id != batch_id:
            executor.shutdown(wait=False)
            raise BatchError(f"{path} holds batch {executor.batch_id}, not batch {batch_id}")
        try:
            executor._resumed = resume_jobs(
                executor._collector, executor._backend, executor._checkpoint, retry_failed
            )
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=False)
            raise
        return executor

    @classmethod
    def discard(
        cls,
        batch_id: int,
        *,
        project_dir: str | os.PathLike[str] | None = None,
        server: str | None = None,
        authenticator: str | None = None,
    ) -> Path:
        """Remove a batch for good: cancel its unfinished jobs and delete its directory.

        The next run of the script that owned it starts a fresh batch. Refused
        while an executor uses the batch. A remotely submitted batch is also
        retired on its server.

        Args:
            batch_id: the batch's ID.
            project_dir: the BOINC project (default ``$PYBOINC_DIR``; none: local).
            server: the master URL of a remotely submitted batch (see ``__init__``).
            authenticator: its account key (see ``__init__``).

        Returns:
            The directory that was removed.

        Raises:
            BatchNotFoundError: no such batch, or its directory is gone.
            BatchLockedError: an executor is using it.
        """
        _check_batch_id(batch_id)
        backend = load_backend(
            _project(project_dir, server), max_workers=1, server=server, authenticator=authenticator
        )
        return discard_batch(backend, batch_id)

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
        """``"local"``, ``"boinc"`` or ``"remote"``."""
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
        return self._submitter.submit_calls(fn, [(args, kwargs)])[0]

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
        chunks = batched(zip(*iterables, strict=False), chunksize)
        window = chunks if buffersize is None else itertools.islice(chunks, buffersize)
        pending = deque(self._submitter.submit_chunk(fn, c) for c in window)
        more = chunks if buffersize is not None else None
        return map_results(weakref.ref(self), fn, pending, more, end_time)

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
            False if the timeout passed first, or if the executor was interrupted
            (^C or SIGTERM) before everything was handed over: those calls are not
            journaled, and a re-run submits them.
        """
        return self._collector.wait_handed_over(timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what has not started; optionally wait.

        Args:
            wait: block until every job that was not cancelled has its result.
            cancel_futures: cancel every future whose job has not started.
        """
        self._collector.stop(wait, cancel_futures=cancel_futures)


def _project(project_dir: str | os.PathLike[str] | None, server: str | None) -> Path | None:
    """The BOINC project to use; an explicit ``server=`` outranks ``$PYBOINC_DIR``."""
    return None if server is not None and project_dir is None else resolve_project_dir(project_dir)


def _check_batch_id(batch_id: object) -> None:
    if not isinstance(batch_id, int) or isinstance(batch_id, bool) or batch_id <= 0:
        raise BatchNotFoundError(f"batch IDs are positive integers, got {batch_id!r}")


@functools.lru_cache(maxsize=1)
def _announce_local() -> None:
    """Say once per process which backend runs the jobs, so nobody wonders where they went."""
    logger.info(
        "no BOINC project configured (project_dir and PYBOINC_DIR unset): "
        "running jobs on the embedded local backend"
    )
