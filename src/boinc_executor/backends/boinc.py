"""The BOINC backend: run jobs as work units of an existing BOINC project.

Data flow (docs/protocol.md, "On a BOINC project")::

    executor ──stage──▶ <download_dir>/<fanout(name)>/<name>    program (shared, once) + data
             ──submit─▶ SELECT existing WU names ─▶ bin/create_work --appname pyboinc
                        --batch ID <JobParams> --stdin  (one process per chunk of jobs,
                        one line "--wu_name <job> <program> <data>" per missing job)
    BOINC:   transitioner ▶ scheduler ▶ volunteer (launcher ▶ runner) ▶ validator
             ▶ script_assimilator ▶ bin/pyboinc_assimilator ▶ BATCH_DIR/new/<job>.<tag>.result
    poll():  result.sent_time watermark ─▶ events.started(job)
             workunit.error_mask != 0   ─▶ error record (tag "error") into BATCH_DIR/new/

Files and ``create_work`` are handled by ``workunits.py``; this module owns the
database side (batches, replay, progress, failures, cancellation).

Choices the module makes, and why:

* **Chunking.** ``map`` packs :attr:`BoincBackend.default_chunksize` (10) calls
  into one work unit unless the caller passes ``chunksize``. Each work unit
  costs a scheduler round trip, two downloads and an upload on the volunteer
  (about 15-20 s of turnaround on a real project, boinc-facts §7) plus a
  workunit row, result rows and a script-assimilator fork on the server
  (~50 work units/s, §5); ten calls per work unit cut that overhead tenfold
  while a map of a few hundred items still spreads over dozens of hosts.
* **Bulk submission.** Submitted calls wait up to :attr:`submit_delay` (0.5 s)
  so they reach ``create_work`` together; ``create_work --stdin`` then inserts
  ~1,000 work units per SQL statement. A duplicate name fails a whole statement
  (§3), so before every ``create_work`` the backend asks the database which of
  its deterministic work-unit names exist and submits only the others. A lock
  file inherited by ``create_work`` keeps a re-run from racing an orphaned
  ``create_work`` whose submitter was killed. Inputs are written by a pool of
  threads (file creation is latency-bound) and ``submit`` waits for them; a job
  journaled by a master killed before its input was written fails alone with
  ``JobLostError`` instead of failing its whole ``create_work`` run.
* **Job parameters** go on the command line (``--rsc_fpops_est`` ...); the
  input template carries none, because template values would override them
  (§3, §8.5). A template that does carry some is reported at start-up.
* **Polling.** The database is asked at most every :attr:`poll_interval`
  seconds (default 2; ``BOINC_EXECUTOR_POLL_INTERVAL``), with two indexed
  queries: results of the batch sent since the last poll, and work units of the
  batch with ``error_mask`` set. Progress counts are one aggregate query, made
  only when asked for.
* **Stuck batches.** Every few polls the backend asks the database for work of
  the batch that a daemon should have handled long ago: a ``transition_time`` long
  past, results reported but not validated, work units validated but not
  assimilated, each for longer than five of that daemon's sleep intervals (at least
  60 s; ``BOINC_EXECUTOR_STUCK_AFTER`` sets the seconds) while nothing of the batch
  moved; and results unsent for that long while the app has no app version the
  scheduler may send. It logs one warning naming the daemon and the commands that check it, and
  ``progress().stuck`` says the same (:mod:`.stuck`), so a future never waits in
  silence for a reason the database shows.
* **Cancelling.** A cancelled future's work unit is cancelled :attr:`cancel_delay`
  (2 s) later, or at once when the executor shuts down normally. A ``SystemExit``
  raised in a ``for`` loop over ``map`` closes the iterator, which cancels, before
  the executor sees the exit; the delay lets the exit drop those cancels, so an
  exit never cancels work units volunteers may already be running.
* **Submitting user.** ``user_id`` argument, else ``$BOINC_EXECUTOR_USER_ID``,
  else the project's user 1 (make_project's administrator) if it exists,
  else 0. It goes into ``batch.user_id`` and ``pyboinc_batch.user_id``.
* **Batch directories** default to ``<project>/pyboinc_batches/<batch_id>``:
  the assimilator runs as the project's user and must be able to write there,
  as BOINC's own sample assimilator writes into ``<project>/results/<batch>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from .. import protocol
from ..batch import BatchDir, Checkpoint, JournalEntry
from ..config import JobParams, ProjectConfig
from ..errors import BatchNotFoundError, ConfigError, SubmissionError, describe_error_mask
from ..protocol.names import APP_NAME
from .base import Backend, BackendEvents
from .boinc_checks import check_layout, check_setup, resolve_user
from .db import Database
from .rows import BatchCounts, FailedWorkunit
from .stuck import StuckWatch
from .workunits import (
    Stager,
    create_work,
)

__all__ = ["APP_NAME", "BoincBackend", "Progress"]

logger = logging.getLogger("boinc_executor")

BATCHES_DIR = "pyboinc_batches"
ENV_POLL_INTERVAL = "BOINC_EXECUTOR_POLL_INTERVAL"
SUBMIT_LOCK = ".submit.lock"

_CREATE_WORK_ATTEMPTS = 3  # a lost race with another submitter is retried with what is missing
_STARTED_SLACK = 5  # seconds: results sent in the second of the last poll may commit late
_STDERR_TAIL = 2000
_CANCELLED = 16  # workunit.error_mask bit


#: Where the jobs of a batch are, as the BOINC database has them (see :class:`BatchCounts`).
Progress = BatchCounts


class BoincBackend(Backend):
    """Runs jobs as work units of the BOINC project at ``project_dir``.

    Args:
        project_dir: the project root (holding ``config.xml``).
        user_id: the BOINC user the batches belong to (see the module docstring).
        poll_interval: seconds between database polls (default 2).

    Raises:
        ConfigError: not a BOINC project, setup-project was not run, wrong
            database credentials, or a bad ``user_id``/``poll_interval``.
        DatabaseError: the database cannot be reached.
    """

    kind = "boinc"
    poll_interval = 2.0
    default_chunksize = 10
    submit_delay = 0.5
    # Hand over whole bulks: create_work runs them in parallel chunks, and a volunteer
    # job costs minutes of scheduling anyway, so nothing gains from early small slices.
    handover_size = 20_000
    cancel_delay = 2.0

    def __init__(
        self,
        project_dir: Path,
        *,
        user_id: int | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self.config = ProjectConfig.load(Path(project_dir))
        self.root = self.config.root.resolve()
        self.poll_interval = _poll_interval(poll_interval)
        check_layout(self.config)
        self._stuck = StuckWatch(self.root, logger, self.poll_interval)
        self._db_lock = threading.Lock()
        self._db = Database(self.config)
        try:
            self.app_id = check_setup(self._db, self.root)
            self.user_id = resolve_user(self._db, self.root, user_id)
        except BaseException:
            self._db.close()
            raise
        self._batch: BatchDir | None = None
        self._batch_id = 0
        self._events: BackendEvents | None = None
        self._stager = Stager(self.config)
        self._started: set[str] = set()
        self._failed_seen: set[str] = set()
        self._cancelled: set[str] = set()
        self._sent_watermark = 0
        self._submitted = False
        self._next_poll = 0.0

    # ------------------------------------------------------------------ batches

    def create_batch(self, name: str, batch_dir: Path | None) -> tuple[int, Path]:
        """Insert BOINC's ``batch`` row and our ``pyboinc_batch`` record.

        Without ``batch_dir`` the directory is ``<project>/pyboinc_batches/<id>``.
        """
        with self._db_lock:
            if batch_dir is not None:
                path = batch_dir.resolve()
                batch_id = self._db.create_batch(
                    name=name, app_id=self.app_id, user_id=self.user_id, batch_dir=path
                )
                return batch_id, path
            batch_id = self._db.create_batch(
                name=name, app_id=self.app_id, user_id=self.user_id, batch_dir=Path()
            )
            path = self.root / BATCHES_DIR / str(batch_id)
            self._db.set_batch_dir(batch_id, path)
        return batch_id, path

    @property
    def batch_root(self) -> Path:
        """``<project>/pyboinc_batches``: default batch directories and script claims."""
        return self.root / BATCHES_DIR

    def locate_batch(self, batch_id: int) -> Path:
        """The directory recorded for ``batch_id`` in ``pyboinc_batch``."""
        with self._db_lock:
            record = self._db.batch_record(batch_id)
        if not (record.batch_dir / protocol.CHECKPOINT).is_file():
            raise BatchNotFoundError(
                f"batch {batch_id} of the project at {self.root} was in {record.batch_dir}, "
                "which no longer holds its checkpoint"
            )
        return record.batch_dir

    def attach(self, batch: BatchDir, checkpoint: Checkpoint, events: BackendEvents) -> None:
        """Bind to the batch; re-point its record if the directory was moved."""
        with self._db_lock:
            record = self._db.batch_record(checkpoint.batch_id)
            if record.batch_dir != batch.path:
                logger.info(
                    "batch %d moved from %s to %s; the assimilator now delivers there",
                    checkpoint.batch_id,
                    record.batch_dir,
                    batch.path,
                )
                self._db.set_batch_dir(checkpoint.batch_id, batch.path)
        self._batch = batch
        self._batch_id = checkpoint.batch_id
        self._events = events

    # ------------------------------------------------------------------ staging

    def stage(self, name: str, data: bytes, *, shared: bool) -> None:
        """Write an input file into the download hierarchy under its fan-out directory.

        The write happens on a background thread; :meth:`submit` waits for it.
        Physical names are immutable (the client caches files by name): an
        existing shared (content-addressed) file is left alone; an existing data
        file with other bytes can only come from a run killed before it
        journaled the job, so no work unit uses it and it is replaced.

        Raises:
            SubmissionError: an earlier write failed.
        """
        self._stager.stage(name, data, shared=shared)

    # ------------------------------------------------------------------ submission

    def read_input(self, name: str, offset: int = -1, size: int = 0) -> bytes:
        """Read a staged input file back from the download hierarchy.

        Inputs are staged whole (create_work needs files), so ``offset`` is always -1.
        """
        with open(self._stager.path(name), "rb") as fh:
            data = fh.read()
        return data if offset < 0 else data[offset : offset + size]

    def wait_staged(self) -> None:
        """Wait for the staging threads, so the collector journals only staged jobs."""
        self._stager.wait()

    def submit(self, jobs: Sequence[JournalEntry], params: JobParams) -> None:
        """Create the work units of ``jobs`` that do not exist yet, in bulk.

        Every file staged so far is written before anything else happens.

        Raises:
            SubmissionError: ``create_work`` failed (its message is included).
            DatabaseError: the database failed.
        """
        self._stager.wait()
        if not jobs:
            return
        assert self._batch is not None, "attach() first"
        self._submitted = True
        with self._submit_lock() as lock_fd:
            todo = list(jobs)
            for attempt in range(_CREATE_WORK_ATTEMPTS):
                with self._db_lock:
                    existing = self._db.existing_workunits([j.job for j in todo])
                todo = [j for j in todo if j.job not in existing]
                if attempt == 0:
                    todo = self._drop_unstaged(todo)
                if not todo:
                    break
                try:
                    create_work(self.root, self._batch_id, todo, params, lock_fd)
                    break
                except SubmissionError:
                    # Another submitter may have created some of these names: a duplicate
                    # fails the whole statement. Retry what is missing if anything changed.
                    with self._db_lock:
                        raced = self._db.existing_workunits([j.job for j in todo])
                    if attempt + 1 == _CREATE_WORK_ATTEMPTS or not raced:
                        raise
                    logger.info("create_work met %d existing work units; retrying", len(raced))
            with self._db_lock:
                self._db.update_batch(self._batch_id, complete=False)

    def _drop_unstaged(self, jobs: list[JournalEntry]) -> list[JournalEntry]:
        """Fail the jobs whose input files are missing; return the others.

        Staging runs in the background, so a master killed just after it
        journaled a job can leave the job without its data file, and the
        re-run, which does not stage journaled jobs again, would hand
        create_work a missing file, failing every job of that create_work run.
        Such a job gets a ``JobLostError`` record instead.
        """
        assert self._batch is not None
        present: dict[str, bool] = {}

        def staged(name: str) -> bool:
            if name not in present:
                present[name] = self._stager.is_staged(name)
            return present[name]

        kept = []
        for job in jobs:
            if staged(job.program) and staged(job.data):
                kept.append(job)
                continue
            info = protocol.failure_info(
                "JobLostError",
                f"the input of job {job.job} was never staged: the process that submitted it "
                "was stopped before the file was written. Submit the call again, in a new "
                "batch_dir",
            )
            info["host"] = protocol.host_name()
            record = protocol.encode_error_record(job.job, info, source="boinc-backend")
            protocol.deliver_record(self._batch.path, job.job, "lost", record)
        if len(kept) < len(jobs):
            logger.error("%d journaled jobs have no input file; they fail", len(jobs) - len(kept))
        return kept

    @contextlib.contextmanager
    def _submit_lock(self) -> Iterator[int]:
        """An exclusive lock that ``create_work`` inherits.

        If the submitter is killed, an orphaned ``create_work`` keeps inserting
        until it exits; the next submitter waits for it here before it asks
        which work units exist, so it neither duplicates nor misses any.
        """
        assert self._batch is not None
        path = self._batch.path / SUBMIT_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ observing

    def poll(self) -> None:
        """Report started jobs and deliver error records for failed work units.

        Rate-limited to one database round every :attr:`poll_interval`.
        """
        if self._events is None or not self._submitted or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + self.poll_interval
        with self._db_lock:
            sent = self._db.sent_since(self._batch_id, self._sent_watermark)
            failed = self._db.failed_workunits(
                self._batch_id, skip=self._failed_seen | self._cancelled
            )
        for name, sent_time in sent:
            self._sent_watermark = max(self._sent_watermark, sent_time - _STARTED_SLACK)
            if name not in self._started:
                self._started.add(name)
                self._events.started(name)
        for wu in failed:
            self._failed_seen.add(wu.name)
            self._deliver_failure(wu)
        if failed:
            self._events.wake()
        if self._stuck.due():
            with self._db_lock:
                self._stuck.check(self._db, self._batch_id)

    def _deliver_failure(self, wu: FailedWorkunit) -> None:
        """Put an error record for a failed work unit into ``new/`` unless one is there."""
        assert self._batch is not None
        if protocol.parse_job_name(wu.name) is None:
            return
        record_name = protocol.record_file_name(wu.name, "error")
        if (self._batch.new_dir / record_name).exists() or self._batch.pack.holds(wu.name):
            return
        where = (
            f"; its last result {wu.result_name} ended with exit status {wu.exit_status}"
            if wu.result_name
            else "; no result of it ran"
        )
        hint = (
            "It was cancelled outside this executor (bin/cancel_jobs or the web pages)"
            if wu.error_mask & _CANCELLED
            else "Raise JobParams.max_error_results and max_total_results to allow more retries"
        )
        info = protocol.failure_info(
            "WorkunitError",
            f"BOINC gave up on job {wu.name} (work unit {wu.wu_id}, error_mask {wu.error_mask}: "
            f"{describe_error_mask(wu.error_mask)}){where}. {hint}",
            error_mask=wu.error_mask,
            exit_status=wu.exit_status,
            stderr_tail=protocol.tail(wu.stderr_out, _STDERR_TAIL),
        )
        info["host"] = protocol.host_name()
        record = protocol.encode_error_record(wu.name, info, source="boinc-backend")
        protocol.deliver_record(self._batch.path, wu.name, "error", record)

    def progress(self) -> Progress:
        """Counts of the batch's work units, and why it is stuck if a daemon lets it wait."""
        with self._db_lock:
            counts = self._db.batch_counts(self._batch_id)
            stuck = self._stuck.check(self._db, self._batch_id)
        return dataclasses.replace(counts, stuck=stuck)

    # ------------------------------------------------------------------ cancel / close

    def cancel(self, jobs: Collection[str]) -> None:
        """Cancel work units as ``bin/cancel_jobs`` does (running results run on)."""
        names = sorted(jobs)
        if not names:
            return
        self._cancelled.update(names)
        with self._db_lock:
            self._db.cancel_workunits(names)

    def close(self, *, complete: bool, interrupted: bool = False) -> None:
        """Refresh the ``batch`` row (COMPLETE when ``complete``) and disconnect.

        Nothing is cancelled here, interrupted or not: work units handed to BOINC
        keep running on the volunteers, and the next run collects their results.
        """
        try:
            if self._batch_id:
                with self._db_lock:
                    self._db.update_batch(self._batch_id, complete=complete)
        finally:
            self._stager.close()
            with self._db_lock:
                self._db.close()


def _poll_interval(value: float | None) -> float:
    source = "poll_interval"
    if value is None:
        raw = os.environ.get(ENV_POLL_INTERVAL)
        if not raw:
            return BoincBackend.poll_interval
        source = ENV_POLL_INTERVAL
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{ENV_POLL_INTERVAL}={raw!r} is not a number of seconds") from None
    if not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{source} must be a positive number of seconds, got {value!r}")
    return float(value)
