"""The collector: the one thread that moves jobs from the front end to the backend and back.

Data flow::

    executor.submit/map ──add()──▶ buffer ─┐
    executor.resume ──register()──▶ jobs ──┤   collector thread, every wake-up:
                                           ▼
          flush: stage inputs ─▶ journal (batch.py) ─▶ backend.submit (in bulk)
          scan:  BATCH_DIR/new/<job>.<tag>.result ─▶ decoder thread: read (bounded),
                 decode (protocol + decoding) ─▶ resolve the job's futures
                 ─▶ move to old/ (or quarantine/)
          poll:  backend.poll() (outcomes that leave no file become error records)

Everything that touches the batch directory or the backend after ``submit``
returns happens on this thread; callers' threads only pickle their calls and
append to the buffer, so an unpicklable call fails at once and a journaled
digest always matches what was submitted. Records are read and decoded on a
separate decoder thread, so a large or pathological record (up to the size
cap) never delays submission, cancellation or other jobs' scans. One lock
guards the job table; no I/O happens while it is held.

Replay: a re-opened batch directory's journal says which job indexes were
handed over. A re-submitted call whose index and digest match its journal line
is not handed over again unless the backend lacks it, and its record is read
from ``old/`` or ``new/`` when it has one.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from . import protocol
from .backends.base import Backend, JobState
from .batch import BatchDir, Checkpoint, JournalEntry
from .config import JobParams
from .decoder import RecordDecoder
from .errors import BoincExecutorError, SubmissionError, rebuild_exception
from .protocol.decoding import TypePolicy

__all__ = ["Collector", "Job"]

logger = logging.getLogger("boinc_executor")

_BUSY_SCAN_INTERVAL = 2.0  # seconds between scans of new/ while the decoder has a backlog


class Job:
    """One job: its name, its calls' futures, and where it is.

    A job has one future per call, except a ``map`` chunk: like
    ``ProcessPoolExecutor``, it has a single future whose result is the list of
    the calls' outcomes, ``(True, value)`` or ``(False, exception)``, so a map
    over many small calls does not pay for a future per call.

    It is also the done-callback of its futures, so cancelling a future reaches
    the collector without a closure per future.
    """

    __slots__ = ("call", "chunk", "collector", "futures", "index", "n", "name", "state")

    def __init__(
        self,
        collector: Collector,
        name: str,
        index: int,
        call: int,
        futures: list[Future[Any]],
        *,
        n: int | None = None,
    ) -> None:
        self.collector = collector
        self.name = name
        self.index = index
        self.call = call
        self.futures = futures
        self.n = len(futures) if n is None else n  # calls the job carries
        self.chunk = n is not None  # one future for all n calls
        self.state = JobState.PENDING

    def __call__(self, future: Future[Any]) -> None:
        if future.cancelled():
            self.collector.future_cancelled(self, future)


class Collector:
    """Owns the job table and the thread that submits jobs and resolves their futures.

    Args:
        batch: the open batch directory.
        checkpoint: its checkpoint (batch ID and job-name prefix).
        backend: the attached backend.
        params: work-unit parameters handed to every ``backend.submit``.
        policy: which types result payloads may contain.
        max_result_bytes: records larger than this are refused unread.
        remove_when_complete: delete the batch directory once every job is resolved
            (for directories the executor chose itself).
    """

    def __init__(
        self,
        batch: BatchDir,
        checkpoint: Checkpoint,
        backend: Backend,
        *,
        params: JobParams,
        policy: TypePolicy,
        max_result_bytes: int,
        remove_when_complete: bool = False,
    ) -> None:
        self.batch = batch
        self.batch_id = checkpoint.batch_id
        self.prefix = checkpoint.prefix
        self.backend = backend
        self.params = params
        self._remove_when_complete = remove_when_complete
        self.lock = threading.RLock()
        self.wake = threading.Event()
        # Signalled whenever a flush pass ends; see wait_handed_over().
        self._handed_over = threading.Condition(self.lock)
        self._flushing = 0
        self.journal = batch.read_journal()
        self._handled = batch.handled_records()
        # Records already in new/ for journaled jobs the re-run has not re-submitted yet.
        self._early: dict[str, str] = {}
        for entry in batch.scan_new():
            parsed = protocol.parse_record_name(entry.name)
            if parsed is not None:
                self._early.setdefault(parsed[0], entry.name)
        self.handled_at_start = len(self._handled)
        self._stopping = False
        self._jobs: dict[str, Job] = {}
        self._buffer: deque[tuple[Job, JournalEntry, bytes | None, bytes]] = deque()
        self._buffered_since = 0.0
        self._resubmit: list[JournalEntry] = []
        self._to_cancel: list[str] = []
        self._replay: deque[tuple[str, Path]] = deque()
        self._staged_programs: set[str] = set()
        self.next_job = 0
        self.next_call = 0
        self._decoder: RecordDecoder[Job] = RecordDecoder(
            batch,
            policy,
            max_result_bytes,
            resolve=lambda job, outcomes, error: self._resolve(job, outcomes=outcomes, error=error),
            on_idle=self.wake.set,  # the backlog is read: scan new/ again now
            name=f"boinc-executor-decoder-{self.batch_id}",
        )
        self._thread = threading.Thread(
            target=self._run, name=f"boinc-executor-collector-{self.batch_id}", daemon=True
        )

    # ------------------------------------------------------------------ front-end side

    def start(self) -> None:
        """Start the collector and decoder threads."""
        self._decoder.start()
        self._thread.start()

    def allocate(self, n_calls: int) -> tuple[int, int]:
        """Reserve the next job index and call indexes; returns (job index, first call)."""
        with self.lock:
            if self._stopping:
                raise RuntimeError("cannot schedule new futures after shutdown")
            index, call = self.next_job, self.next_call
            self.next_job += 1
            self.next_call += n_calls
        return index, call

    def add(self, job: Job, entry: JournalEntry, program: bytes, data: bytes) -> None:
        """Buffer a new job; it is journaled and handed over in bulk by the thread."""
        for fut in job.futures:
            fut.add_done_callback(job)
        with self.lock:
            self._jobs[job.name] = job
            if not self._buffer:
                self._buffered_since = time.monotonic()
            new_program = entry.program not in self._staged_programs
            self._staged_programs.add(entry.program)
            self._buffer.append((job, entry, program if new_program else None, data))
        self.wake.set()

    def register(self, job: Job, entry: JournalEntry) -> None:
        """Track a journaled job again: resolve it from its record, or ask the backend for it."""
        for fut in job.futures:
            fut.add_done_callback(job)
        job.state = JobState.SUBMITTED
        with self.lock:
            self._jobs[job.name] = job
            if job.name in self._handled:
                self._replay.append((job.name, self.batch.old_dir / self._handled.pop(job.name)))
            elif self._early.pop(job.name, None) is None:
                self._resubmit.append(entry)
            # else: its record waits in new/, where the next scan claims it
        self.wake.set()

    def stop(self, wait: bool, *, cancel_futures: bool = False) -> None:
        """Accept no more jobs; the thread exits once every tracked job is resolved.

        Args:
            wait: join the thread.
            cancel_futures: first cancel every future whose job has not started
                (taken atomically with refusing new jobs, so none slips through).
        """
        with self.lock:
            self._stopping = True
            futures = [f for j in self._jobs.values() for f in j.futures] if cancel_futures else []
        for fut in futures:
            fut.cancel()
        self.wake.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def wait_handed_over(self, timeout: float | None = None) -> bool:
        """Block until every buffered job is journaled and handed to the backend.

        Returns:
            False if ``timeout`` seconds passed first.
        """
        self.wake.set()
        with self._handed_over:
            return self._handed_over.wait_for(
                lambda: not (self._buffer or self._resubmit or self._flushing), timeout
            )

    def output(self, future: Future[Any]) -> protocol.TaskOutput | None:
        """What the call behind ``future`` printed, once its record was read (else None)."""
        return self._decoder.output(future)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        with self.lock:
            return self._stopping

    # ------------------------------------------------------------------ backend events

    def job_started(self, job_name: str) -> None:
        """Backend event: the job runs now, so its futures can no longer be cancelled."""
        with self.lock:
            job = self._jobs.get(job_name)
            if job is None or not job.state.can_become(JobState.RUNNING):
                return
            job.state = JobState.RUNNING
            for fut in job.futures:
                if not fut.done() and not fut.running():
                    fut.set_running_or_notify_cancel()

    def future_cancelled(self, job: Job, future: Future[Any]) -> None:
        """Done-callback of a cancelled future: notify waiters, cancel the job if all are."""
        with contextlib.suppress(RuntimeError):  # already notified
            future.set_running_or_notify_cancel()
        with self.lock:
            if not all(f.cancelled() for f in job.futures):
                return
            if self._jobs.get(job.name) is not job or not job.state.can_become(JobState.CANCELLED):
                return
            was_submitted = job.state is JobState.SUBMITTED
            job.state = JobState.CANCELLED
            del self._jobs[job.name]
            if was_submitted:
                self._to_cancel.append(job.name)
        self.wake.set()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        """Flush submissions, scan new/, poll the backend, until stopped and drained."""
        last_poll = last_scan = 0.0
        backend = self.backend
        timeout = backend.poll_interval
        while True:
            self.wake.wait(timeout)
            self.wake.clear()
            try:
                self._flush(force=self.stopping)
                self._cancel_pending()
                self._replay_records()
                # While the decoder works through a backlog, rescanning new/ on every
                # wake-up would cost O(backlog) each time; look again when it is done
                # (or now and then, for records of other jobs behind a slow one).
                if not self._decoder.busy or time.monotonic() - last_scan >= _BUSY_SCAN_INTERVAL:
                    last_scan = time.monotonic()
                    self._scan()
                if time.monotonic() - last_poll >= backend.poll_interval:
                    last_poll = time.monotonic()
                    backend.poll()
            except Exception:  # keep collecting: one bad step must not strand every future
                logger.exception("boinc-executor collector step failed; retrying")
                time.sleep(min(backend.poll_interval, 1.0))
            with self.lock:
                if self._stopping and not self._jobs and not self._buffer:
                    break
                timeout = backend.poll_interval
                if self._buffer:  # not yet due: come back when it is
                    age = time.monotonic() - self._buffered_since
                    timeout = max(0.0, min(timeout, backend.submit_delay - age))
        self._finish()

    def _flush(self, force: bool) -> None:
        """Stage, journal and hand over buffered jobs, in bulk."""
        backend = self.backend
        with self.lock:
            due = force or time.monotonic() - self._buffered_since >= backend.submit_delay
            if not (self._buffer and due) and not self._resubmit:
                return
            # A slice at a time, so the first jobs run while later ones are still staged.
            take = min(len(self._buffer), backend.handover_size) if due else 0
            buffer = [self._buffer.popleft() for _ in range(take)]
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
            for _job, entry, program, data in live:
                if program is not None:
                    backend.stage(entry.program, program, shared=True)
                backend.stage(entry.data, data, shared=False)
            backend.wait_staged()  # journaled implies staged, whenever the master dies
            entries = [entry for _, entry, _, _ in live]
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

    def _cancel_pending(self) -> None:
        with self.lock:
            names, self._to_cancel = self._to_cancel, []
        if names:
            self.backend.cancel(names)

    def _finish(self) -> None:
        self._decoder.close()
        complete = self.complete
        try:
            self.backend.close(complete=complete)
        except Exception:
            logger.exception("closing the %s backend failed", self.backend.kind)
        self.batch.close()
        if self._remove_when_complete and complete:
            shutil.rmtree(self.batch.path, ignore_errors=True)

    @property
    def complete(self) -> bool:
        """Whether every journaled job was re-submitted or created, and all are resolved."""
        with self.lock:
            return not self._jobs and len(self.journal) <= self.next_job

    # ------------------------------------------------------------------ records

    def _scan(self) -> None:
        batch = self.batch
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
            if self._decoder.holds(entry.path):
                continue  # the decoder has it; it moves the file when done
            with self.lock:
                job = self._jobs.get(job_name)
                if job is not None and job.state is JobState.PENDING:
                    continue  # only a replayed job can have a record before it is handed over
            if job is not None:
                self._decoder.submit(job, batch.new_dir / name, name)
                continue
            self._unclaimed_record(job_name, name)

    def _unclaimed_record(self, job_name: str, name: str) -> None:
        """A record in ``new/`` for a job no future waits on: keep, hand over, or refuse it."""
        prefix, batch_id, index = protocol.parse_job_name(job_name) or ("", -1, -1)
        if (prefix, batch_id) != (self.prefix, self.batch_id):
            self._quarantine(name, f"record of job {job_name}, which belongs to another batch")
            return
        with self.lock:
            awaiting_replay = index in self.journal and index >= self.next_job
            if awaiting_replay:
                first = self._early.setdefault(job_name, name)
            seen = index < self.next_job
        if awaiting_replay:
            if first != name:
                self.batch.mark_handled(name)  # a duplicate delivery
            return  # the re-run has not re-submitted this job yet; it will claim the record
        if seen:
            # A late duplicate or a cancelled job's record; or the decoder handled it
            # while this scan's directory listing was being walked.
            with contextlib.suppress(FileNotFoundError):
                self.batch.mark_handled(name)
        else:
            self._quarantine(name, f"record of job {job_name}, which this batch never created")

    def _replay_records(self) -> None:
        """Resolve re-submitted jobs from the records they already have in ``old/``."""
        while True:
            with self.lock:
                if not self._replay:
                    return
                job_name, path = self._replay.popleft()
                job = self._jobs.get(job_name)
            if job is not None:
                self._decoder.submit(job, path, None)

    def _resolve(
        self,
        job: Job,
        *,
        outcomes: list[tuple[bool, Any]] | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Resolve every future of a job exactly once (futures already done are skipped)."""
        with self.lock:
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
            elif job.chunk:
                fut.set_result([(ok, v if ok else rebuild_exception(v)) for ok, v in outcomes])
            else:
                ok, value = outcomes[i]
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(rebuild_exception(value))

    def _quarantine(self, name: str, reason: str) -> None:
        try:
            target = self.batch.quarantine(name, reason)
        except FileNotFoundError:
            return
        logger.warning(
            "refused %s in %s: %s (moved to %s)", name, self.batch.new_dir, reason, target
        )
