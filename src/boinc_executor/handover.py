"""The collector's hand-over of submitted jobs: buffer, stage, journal, submit in bulk.

``submit`` and ``map`` add each new job to a bounded buffer; the collector
thread (or, for a lone job that would start at once, the submitting thread)
takes a slice of it at a time, stages its inputs, journals it and hands it to
the backend in one ``backend.submit``. Journaled implies staged, whenever the
master dies, and a job is handed over only once journaled. This class is a
mixin of :class:`~boinc_executor.collector.Collector`, which owns the state it
uses; it is its own module to keep each under ~500 lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .backends.base import Backend, JobState
from .batch import BatchDir, JournalEntry
from .config import JobParams
from .errors import BoincExecutorError, SubmissionError

if TYPE_CHECKING:
    from .job import Job

__all__ = ["BUFFER_JOBS", "JobHandOver"]

logger = logging.getLogger("boinc_executor")

_HAND_OVER_WAIT = 0.05  # seconds a submit waits for the collector's flush to end
#: Submitted jobs not yet handed over, at most (or twice the backend's hand-over
#: size): a submitting loop waits past that, as a producer waits on a bounded queue.
BUFFER_JOBS = 1024
_BUFFER_BYTES = 64 << 20  # ... or this much of their pickled inputs


class JobHandOver:
    """Buffering new jobs and handing them over in bulk (a mixin of the collector)."""

    # State owned by the collector (see Collector.__init__).
    backend: Backend
    batch: BatchDir
    batch_id: int
    params: JobParams
    lock: threading.RLock
    wake: threading.Event
    _jobs: dict[str, Job]
    _buffer: deque[tuple[Job, JournalEntry, bytes | None, bytes]]
    _buffered_since: float
    _buffered_bytes: int
    _buffer_jobs: int
    _staged_programs: set[str]
    _resubmit: list[JournalEntry]
    _flushing: int
    _stopping: bool
    _abandoned: bool
    _handed_over: threading.Condition
    _handing_over: threading.Lock
    _thread: threading.Thread

    if TYPE_CHECKING:  # the collector's own

        def on_own_thread(self) -> bool: ...

        def _resolve(
            self,
            job: Job,
            *,
            outcomes: list[tuple[bool, Any]] | None = None,
            error: BaseException | None = None,
        ) -> None: ...

    def add(self, job: Job, entry: JournalEntry, program: bytes, data: bytes) -> None:
        """Buffer a new job; it is journaled and handed over in bulk by the thread.

        The buffer is bounded: a caller that fills it waits until the thread has
        handed jobs over, so a loop of ``submit`` holds a few thousand jobs' inputs
        in memory at most, not all of them (and costs less memory per pending job
        than ``ProcessPoolExecutor``). A future's done-callback, which runs on
        this collector's own threads, never waits.
        """
        for fut in job.futures:
            fut.add_done_callback(job)
        with self.lock:
            self._jobs[job.name] = job
            if not self._buffer:
                self._buffered_since = time.monotonic()
            new_program = entry.program not in self._staged_programs
            self._staged_programs.add(entry.program)
            self._buffer.append((job, entry, program if new_program else None, data))
            self._buffered_bytes += len(data)
            full = self._buffer_full()
            lone = len(self._buffer) == 1 and not (self._flushing or self._stopping)
        if lone and self.backend.wants_jobs_now() and self._hand_over_here():
            return
        self.wake.set()
        if full and not self.on_own_thread():
            with self._handed_over:
                while self._buffer_full() and self._thread.is_alive() and not self._abandoned:
                    self._handed_over.wait(0.5)

    def _hand_over_here(self) -> bool:
        """Hand the buffer over on the calling thread; False if another thread is at it.

        For a lone job that would start at once: the hop to the collector thread
        costs as much as the job's whole hand-over. Never on the collector's own
        threads (a done-callback that submits). The collector thread holds the
        lock only around its own flush, which with nothing to hand over takes
        microseconds, so the wait for it is short and bounded (a loaded machine
        can preempt it there): no thread can deadlock on it, and past the bound
        the collector thread does the hand-over.
        """
        if self.on_own_thread() or not self._handing_over.acquire(timeout=_HAND_OVER_WAIT):
            return False
        try:
            self._flush(force=True)
        finally:
            self._handing_over.release()
        return True

    def _buffer_full(self) -> bool:
        return len(self._buffer) >= self._buffer_jobs or self._buffered_bytes >= _BUFFER_BYTES

    def wait_handed_over(self, timeout: float | None = None) -> bool:
        """Block until every buffered job is journaled and handed to the backend.

        Returns:
            False if ``timeout`` seconds passed first, if called on the collector
            thread (which is the one doing the handing over) while jobs are still
            buffered, or once the collector is abandoned (an interrupted master: what
            is still buffered is never handed over, and waiting for it would never
            end; on the decoder thread it would also hold up the collector, which
            joins the decoder as it finishes).
        """
        self.wake.set()
        if threading.current_thread() is self._thread:
            timeout = 0

        def pending() -> bool:
            return bool(self._buffer or self._resubmit or self._flushing)

        with self._handed_over:
            self._handed_over.wait_for(lambda: self._abandoned or not pending(), timeout)
            return not pending()

    def _flush(self, force: bool) -> None:
        """Stage, journal and hand over buffered jobs, in bulk."""
        backend = self.backend
        with self.lock:
            due = (
                force
                or time.monotonic() - self._buffered_since >= backend.submit_delay
                or self._buffer_full()
            )
            if not (self._buffer and due) and not self._resubmit:
                return
            # A slice at a time, so the first jobs run while later ones are still staged.
            take = min(len(self._buffer), backend.handover_size) if due else 0
            buffer = [self._buffer.popleft() for _ in range(take)]
            self._buffered_bytes -= sum(len(item[3]) for item in buffer)
            resubmit, self._resubmit = self._resubmit, []
            self._flushing += 1
        try:
            self._hand_over(buffer, resubmit)
        finally:
            with self._handed_over:
                self._flushing -= 1
                self._handed_over.notify_all()

    def _hand_over(
        self,
        buffer: list[tuple[Job, JournalEntry, bytes | None, bytes]],
        resubmit: list[JournalEntry],
    ) -> None:
        backend = self.backend
        live = [item for item in buffer if item[0].state is JobState.PENDING]
        try:
            entries = []
            for _job, entry, program, data in live:
                if program is not None:
                    backend.stage(entry.program, program, shared=True)
                entries.append(backend.stage_input(entry, data))
            backend.wait_staged()  # journaled implies staged, whenever the master dies
            if entries:
                self.batch.append_journal(entries)
            with self.lock:
                for job, *_ in live:
                    if job.state is JobState.PENDING:
                        job.state = JobState.SUBMITTED
            if entries or resubmit:
                backend.submit(resubmit + entries, self.params)
        except (BoincExecutorError, OSError) as exc:
            logger.error("submitting %d jobs failed: %s", len(live) + len(resubmit), exc)
            failed = [job for job, *_ in live]
            with self.lock:
                failed += [self._jobs[e.job] for e in resubmit if e.job in self._jobs]
            error = SubmissionError(
                f"could not hand the job to the {backend.kind} backend: {exc}. The job is "
                f"journaled in {self.batch.path}; fix the cause and run again, or "
                f"BoincExecutor.resume({self.batch_id})"
            )
            for job in failed:
                self._resolve(job, error=error)
