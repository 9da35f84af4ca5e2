"""The collector: the one thread that moves jobs from the front end to the backend and back.

Data flow::

    executor.submit/map ──add()──▶ buffer ─┐
    executor.resume ──register()──▶ jobs ──┤   collector thread, every wake-up:
                                           ▼
          flush: stage inputs ─▶ journal (batch.py) ─▶ backend.submit (in bulk)
          scan:  BATCH_DIR/new/<job>.<tag>.result ─▶ decoder thread: read (bounded),
                 decode (protocol + decoding) ─▶ append to handled.pack
                 ─▶ resolve the job's futures (job.py) ─▶ unlink (or quarantine/)
          poll:  backend.poll() (outcomes that leave no file become error records)

The hand-over (buffer, flush) is in ``handover.py``, the intake of records from
``new/`` (scan, claim) in ``intake.py``: both are mixins of :class:`Collector`.

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
from the handled-records pack or ``new/`` when it has one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import protocol
from .backends.base import Backend, JobState
from .batch import BatchDir, Checkpoint, JournalEntry
from .cancels import OPERATOR, HeldCancels
from .config import JobParams
from .decoder import RecordDecoder
from .handover import BUFFER_JOBS, JobHandOver
from .intake import RecordIntake
from .job import Job
from .protocol.decoding import TypePolicy
from .watch import NewRecordWatch

__all__ = ["Collector"]

logger = logging.getLogger("boinc_executor")

_BUSY_SCAN_INTERVAL = 2.0  # seconds between scans of new/ while the decoder has a backlog


#: how the name of a `boinc-executor cancel` record ends
_CANCEL_SUFFIX = f".{protocol.CANCEL_TAG}{protocol.RECORD_SUFFIX}"


class Collector(JobHandOver, RecordIntake):
    """Owns the job table and the thread that submits jobs and resolves their futures.


    Args:
        batch: the open batch directory.
        checkpoint: its checkpoint (batch ID and job-name prefix).
        backend: the attached backend.
        params: work-unit parameters handed to every ``backend.submit``.
        policy: which types result payloads may contain.
        max_result_bytes: records larger than this are refused unread.
        on_finish: called once the thread is done and the directory is unlocked,
            with (complete, abandoned, failed calls); the executor decides there whether the
            batch directory is kept (see :meth:`abandon`).
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
        on_finish: Callable[[bool, bool, int], None] | None = None,
    ) -> None:
        self.batch = batch
        self.batch_id = checkpoint.batch_id
        self.prefix = checkpoint.prefix
        self.backend = backend
        self.params = params
        self._on_finish = on_finish
        self._abandoned = False
        self.failed_calls = 0  # calls resolved with an exception (they can be retried)
        self.lock = threading.RLock()
        self.wake = threading.Event()
        # Signalled whenever a flush pass ends; see wait_handed_over().
        self._handed_over = threading.Condition(self.lock)
        self._flushing = 0
        # Held by whichever thread stages, journals and hands over: the collector
        # thread, or a submitting thread handing a lone job over itself.
        self._handing_over = threading.Lock()
        self.journal = batch.read_journal()
        self._pack = batch.pack
        self._new = batch.new_path
        # Regular files in new/ for journaled jobs the re-run has not re-submitted yet.
        # (A FIFO, link or directory under a record's name never counts as a record.)
        self._early: dict[str, str] = {}
        with os.scandir(self._new) as listing:
            for item in listing:
                parsed = protocol.parse_record_name(item.name)
                if parsed is not None and item.is_file(follow_symlinks=False):
                    self._early.setdefault(parsed[0], item.name)
        # Re-submitted jobs counting on such a record, with the scan generation they
        # were registered in: a later scan that does not find the record resubmits them.
        self._awaiting: dict[str, tuple[JournalEntry, int]] = {}
        self._scan_generation = 0
        self._scan_requested = True
        # Names in new/ a scan skips at once: queued in the decoder (until their file
        # is removed), or refused where even moving them failed.
        self._queued: set[str] = set()
        self._refused: set[str] = set()
        self.handled_at_start = len(self._pack.index)
        self._stopping = False
        self._jobs: dict[str, Job] = {}
        self._buffer: deque[tuple[Job, JournalEntry, bytes | None, bytes]] = deque()
        self._buffered_since = 0.0
        self._buffered_bytes = 0
        self._buffer_jobs = max(BUFFER_JOBS, 2 * backend.handover_size)
        self._resubmit: list[JournalEntry] = []
        # Handed-over jobs to cancel at the backend, held back for cancel_delay (cancels.py).
        self._to_cancel = HeldCancels(backend.cancel_delay)
        # Monotonic time results were last given up before stop(): a future cancelled, or
        # a map iterator closed with results it never yielded (see given_up_within).
        self._last_given_up = -1e9
        self._staged_programs: set[str] = set()
        self.next_job = 0
        self.next_call = 0
        self._decoder: RecordDecoder[Job] = RecordDecoder(
            batch,
            policy,
            max_result_bytes,
            resolve=self._resolve_many,
            released=self._released,
            removed=self._removed,
            on_idle=self._decoder_idle,
            name=f"boinc-executor-decoder-{self.batch_id}",
            reuse=backend.reuse_records,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"boinc-executor-collector-{self.batch_id}", daemon=True
        )
        # Records nobody announces (the assimilator's) are learned as they land.
        self._watch = (
            None
            if backend.announces_records
            else NewRecordWatch(
                self._new,
                self.records_landed,
                self.request_scan,
                name=f"boinc-executor-watch-{self.batch_id}",
            )
        )

    # ------------------------------------------------------------------ front-end side

    def start(self) -> None:
        """Start the collector and decoder threads, and the watch on ``new/`` if any."""
        self._decoder.start()
        if self._watch is not None and not self._watch.start():
            self._watch = None  # no inotify here: scans find every record
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

    def register(self, job: Job, entry: JournalEntry) -> None:
        """Track a journaled job again: resolve it from its record, or ask the backend for it."""
        for fut in job.futures:
            fut.add_done_callback(job)
        job.state = JobState.SUBMITTED
        with self.lock:
            self._jobs[job.name] = job
            if job.name in self._pack.index:
                job.record = ""  # replayed from the pack: records in new/ are duplicates
            elif self._early.pop(job.name, None) is not None:
                self._awaiting[job.name] = (entry, self._scan_generation)
                self._scan_requested = True  # its record waits in new/: claim it
            else:
                self._resubmit.append(entry)
        if job.record == "":
            self._decoder.submit(job, None)
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
        if wait and not self.on_own_thread():
            self._thread.join()

    def abandon(self, timeout: float | None = None) -> bool:
        """Stop now, for an interrupted master: cancel nothing, hand nothing more over.

        Jobs already handed over stay with the backend (on BOINC they keep
        running); jobs still buffered were never journaled, so the next run
        submits them. Waits up to ``timeout`` for the thread to finish.

        Returns:
            False if the thread was still busy (e.g. inside ``create_work``) when
            the timeout passed; it is a daemon thread and dies with the process.
        """
        with self._handed_over:  # (the collector's lock) a waiting flush() returns now
            self._stopping = True
            self._abandoned = True
            self._to_cancel.clear()
            self._handed_over.notify_all()
        self.wake.set()
        if self._thread is threading.current_thread() or not self._thread.is_alive():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        """Whether the thread still runs (it ends once the batch is drained or abandoned)."""
        return self._thread.is_alive()

    @property
    def abandoned(self) -> bool:
        """Whether :meth:`abandon` was called."""
        with self.lock:
            return self._abandoned

    def on_own_thread(self) -> bool:
        """Whether the caller is a done-callback running on the collector or decoder thread.

        Such a caller must never wait for these threads: the collector joins the
        decoder when it finishes, and the decoder is the one running the callback.
        ``stop(wait=True)`` then returns without joining, and ``wait_handed_over``
        on the collector thread does not wait, as ``ProcessPoolExecutor`` would
        deadlock or raise instead.
        """
        return threading.current_thread() is self._thread or self._decoder.on_thread()

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

    def job_failed(self, job_name: str, error: BaseException) -> None:
        """Backend event: the job's outcome cannot reach ``new/``; fail its futures."""
        with self.lock:
            job = self._jobs.get(job_name)
        if job is not None:
            self._resolve(job, error=error)

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
            asked = time.monotonic()
            if not self._stopping:  # shutdown(cancel_futures=True) is no interrupt's doing
                self._last_given_up = asked
            if was_submitted and not self._abandoned:
                self._to_cancel.add(job.name, asked)
        self.wake.set()

    def _decoder_idle(self) -> None:
        """The backlog is read: run the scan that was deferred while it lasted, if any."""
        if self._scan_requested:
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
            if self.abandoned:
                break
            cancel_due: float | None = None
            try:
                with self._handing_over:
                    self._flush(force=self.stopping)
                cancel_due = self._cancel_pending()
                # A scan skips queued records by name, but still lists new/; while the
                # decoder works through a backlog, list it only now and then.
                now = time.monotonic()
                since = now - last_scan
                busy = self._decoder.busy
                if since >= (_BUSY_SCAN_INTERVAL if busy else backend.poll_interval) or (
                    self._scan_requested and not busy
                ):
                    last_scan = now
                    self._scan_requested = False
                    self._scan()
                if time.monotonic() - last_poll >= backend.poll_interval:
                    last_poll = time.monotonic()
                    backend.poll()
            except Exception:  # keep collecting: one bad step must not strand every future
                logger.exception("boinc-executor collector step failed; retrying")
                time.sleep(min(backend.poll_interval, 1.0))
            with self.lock:
                if self._stopping and not self._jobs and not self._buffer and not self._to_cancel:
                    break
                timeout = backend.poll_interval
                if cancel_due is not None:
                    timeout = min(timeout, cancel_due)
                if self._buffer:  # not yet due: come back when it is
                    age = time.monotonic() - self._buffered_since
                    timeout = max(0.0, min(timeout, backend.submit_delay - age))
        self._finish()

    def _cancel_pending(self) -> float | None:
        """Send the cancels that are due; returns seconds until the next one is, if any."""
        with self.lock:
            stopping = self._stopping and not self._abandoned  # a normal shutdown: all now
            names, next_due = self._to_cancel.take_due(time.monotonic(), all_now=stopping)
        if names:
            self.backend.cancel(names)
        return next_due

    def drop_held_cancels(self) -> None:
        """Forget the cancels still held back: the exit that follows them must cost no work."""
        with self.lock:
            self._to_cancel.drop_held()

    def give_up(self) -> None:
        """Note that a ``map`` iterator was closed with results it never yielded."""
        with self.lock:
            if not self._stopping:
                self._last_given_up = time.monotonic()

    def given_up_within(self, seconds: float) -> bool:
        """Whether results were given up in the last ``seconds`` while the executor ran.

        The executor asks at exit: a ``SystemExit`` raised in a ``for`` loop over
        ``map`` closes the iterator (cancelling what has not started, dropping what
        it has not yielded) a moment before the executor can see the exit.
        """
        with self.lock:
            return time.monotonic() - self._last_given_up < seconds

    def _finish(self) -> None:
        try:  # a last look: late duplicates go now, so a finished batch leaves new/ empty
            self._scan()
        except OSError as exc:
            logger.warning("the last scan of %s failed: %s", self._new, exc)
        if self._watch is not None:
            self._watch.close()
        self._decoder.close()
        abandoned = self.abandoned
        complete = self.complete and not abandoned
        try:
            self.backend.close(complete=complete, interrupted=abandoned)
        except Exception:
            logger.exception("closing the %s backend failed", self.backend.kind)
        self.batch.close()
        if self._on_finish is not None:
            self._on_finish(complete, abandoned, self.failed_calls)

    @property
    def complete(self) -> bool:
        """Whether every journaled job was re-submitted or created, and all are resolved."""
        with self.lock:
            return not self._jobs and len(self.journal) <= self.next_job

    # ------------------------------------------------------------------ resolving

    def _resolve_many(self, outcomes: list[tuple[Job, list[tuple[bool, Any]] | None, Any]]) -> None:
        """Resolve a batch of jobs from the decoder: one lock round for all of them."""
        live = []
        with self.lock:
            jobs = self._jobs
            for job, values, error in outcomes:
                if jobs.get(job.name) is job:
                    del jobs[job.name]
                    job.state = JobState.DONE
                    live.append((job, values, error, job.claim()))
                    # `boinc-executor cancel` spoke for a job the backend may still
                    # hold: it must not run (its late record would only be set aside).
                    if job.record is not None and job.record.endswith(_CANCEL_SUFFIX):
                        self._to_cancel.add(job.name, OPERATOR)
        for job, values, error, running in live:
            self.failed_calls += job.settle(running, values, error)

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
            running = job.claim()
        self.failed_calls += job.settle(running, outcomes, error)
