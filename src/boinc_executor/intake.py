"""The collector's intake of records from ``BATCH_DIR/new/``.

Records reach the collector two ways: the embedded backend names each one as
its worker delivers it (:meth:`RecordIntake.record_delivered`, no scan needed),
and a scan of ``new/`` finds everything else (the BOINC assimilator's
deliveries, anything a backend only announced with a wake-up, and whatever a
stray process or a hostile volunteer left there). The scan stays as the safety
net for both: it runs every ``poll_interval`` whatever happens.

A record is *claimed* for its job (``Job.record``) before it is queued on the
decoder, so one job never has two records decoded; its name stays in the
``_queued`` set until its file has left ``new/``, so a rescan skips it with a
single set lookup. This class is a mixin of :class:`~boinc_executor.collector.Collector`,
which owns the state it uses; it is its own module to keep each under ~500 lines.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from typing import TYPE_CHECKING

from . import protocol
from .backends.base import JobState
from .batch import BatchDir, JournalEntry

if TYPE_CHECKING:
    from .backends.base import Backend
    from .decoder import RecordDecoder
    from .job import Job
    from .protocol.pack import RecordPack

__all__ = ["RecordIntake"]

logger = logging.getLogger("boinc_executor")

_CLAIM_BATCH = 256  # records a scan claims under one lock round


class RecordIntake:
    """Finding and claiming records in ``new/`` (a mixin of the collector)."""

    #: a dot-named file in new/ older than this is a dead writer's leftover
    stale_seconds: float = 3600.0
    # State owned by the collector (see Collector.__init__).
    backend: Backend
    batch: BatchDir
    batch_id: int
    prefix: str
    lock: threading.RLock
    wake: threading.Event
    journal: dict[int, JournalEntry]
    next_job: int
    _jobs: dict[str, Job]
    _decoder: RecordDecoder[Job]
    _pack: RecordPack
    _new: str
    _early: dict[str, str]
    _awaiting: dict[str, tuple[JournalEntry, int]]
    _scan_generation: int
    _scan_requested: bool
    _queued: set[str]
    _refused: set[str]
    _resubmit: list[JournalEntry]

    def request_scan(self) -> None:
        """Backend event: records have probably arrived in ``new/``; scan it soon."""
        self._scan_requested = True
        self.wake.set()

    def record_delivered(self, name: str) -> None:
        """Backend event: the record ``name`` is now in ``new/``; claim it without a scan.

        Safe from any thread. A name this cannot claim at once (not a record name,
        its job unknown or already holding a record) is left to a scan, which
        handles every case.
        """
        parsed = protocol.parse_record_name(name)
        job = None
        if parsed is not None:
            with self.lock:
                job = self._jobs.get(parsed[0])
                if job is None or job.record is not None or job.state is JobState.PENDING:
                    job = None
                elif name not in self._queued:
                    job.record = name
                    self._queued.add(name)
                    self._awaiting.pop(parsed[0], None)
                else:
                    return
        if job is None:
            self.request_scan()
            return
        self._decoder.handle_or_submit(job, name)

    def records_landed(self, landed: list[tuple[str, str]]) -> None:
        """Watch event: regular files with these ``(job, record name)`` landed in ``new/``.

        Claimed exactly as a scan that found them would (``watch.py``), in one
        lock round, without listing ``new/``.
        """
        queued = self._queued
        self._claim([item for item in landed if item[1] not in queued])

    # ------------------------------------------------------------------ scanning new/

    def _scan(self) -> None:
        """List ``new/`` once: claim records, drop duplicates, refuse strangers, clean up.

        Names already queued are skipped before any parsing, so rescanning a backlog
        costs one set lookup per record. Nothing a file in ``new/`` is or is named can
        stop the scan: every refusal is caught, logged, and remembered.
        """
        with self.lock:
            self._scan_generation += 1
            generation = self._scan_generation
        skip_queued, skip_refused = self._queued, self._refused
        now = time.time()
        found: list[tuple[str, str]] = []
        with os.scandir(self._new) as listing:
            for item in listing:
                name = item.name
                if name in skip_queued or name in skip_refused:
                    continue
                if name[0] == ".":
                    self._dot_file(item, now)
                    continue
                parsed = protocol.parse_record_name(name)
                if parsed is None:
                    self._quarantine(name, "not a record file name")
                elif not item.is_file(follow_symlinks=False):
                    self._quarantine(name, "not a regular file (symlink, FIFO or directory)")
                else:
                    found.append((parsed[0], name))
                    if len(found) >= _CLAIM_BATCH:
                        self._claim(found)
                        found = []
        self._claim(found)
        with self.lock:  # re-submitted jobs whose record this scan did not find run again
            for job_name, (entry, registered) in list(self._awaiting.items()):
                if registered < generation:
                    del self._awaiting[job_name]
                    job = self._jobs.get(job_name)
                    if job is not None and job.record is None:
                        self._resubmit.append(entry)
        if len(skip_refused) > 10_000:  # bounded: refusals are retried now and then
            skip_refused.clear()

    def _claim(self, found: list[tuple[str, str]]) -> None:
        """Regular files with record names: claim each for its job, or see whose it is."""
        claimed: list[tuple[Job | None, str | None]] = []
        unclaimed = []
        with self.lock:  # one lock round for the lot
            jobs, queued, awaiting = self._jobs, self._queued, self._awaiting
            for job_name, name in found:
                job = jobs.get(job_name)
                if job is None:
                    unclaimed.append((job_name, name))
                elif job.record is None and job.state is not JobState.PENDING:
                    job.record = name
                    queued.add(name)
                    awaiting.pop(job_name, None)
                    claimed.append((job, name))
                # else: a replayed job not handed over yet, or its second record: later
        self._decoder.submit_many(claimed)
        for job_name, name in unclaimed:
            self._unclaimed_record(job_name, name)

    def _unclaimed_record(self, job_name: str, name: str) -> None:
        """A record in ``new/`` for a job no future waits on: keep, pack, drop, or refuse it."""
        prefix, batch_id, index = protocol.parse_job_name(job_name) or ("", -1, -1)
        journaled = self.journal.get(index)
        retried = journaled is not None and journaled.job == job_name  # a retry's own name
        if batch_id != self.batch_id or (prefix != self.prefix and not retried):
            self._quarantine(name, f"record of job {job_name}, which belongs to another batch")
            return
        with self.lock:
            packed = self._pack.holds(job_name)
            if index in self.journal and not packed:
                # A job journaled by an earlier run that this one has not re-submitted
                # yet (or is re-submitting right now): it will claim the record.
                self._early.setdefault(job_name, name)
                return
            seen = index < self.next_job or index in self.journal
            keep = seen and not packed
            if keep:
                self._queued.add(name)
        if keep:
            # A cancelled job's record, or one whose hand-over failed: pack it (unread),
            # so that a re-run replays it instead of running the job again.
            self._decoder.submit(None, name)
        elif seen:
            # A late duplicate (the first record is in the pack and wins), unless it is
            # a handled record lent to a worker to reuse its file.
            if not self.backend.lends(name):
                self._drop(name)
        else:
            self._quarantine(name, f"record of job {job_name}, which this batch never created")

    def _dot_file(self, item: os.DirEntry[str], now: float) -> None:
        """A dot-named file in ``new/``: a writer's temp file, or something planted.

        Writers create records under dot names and rename them into place, so a
        young one is left alone. One older than :attr:`stale_seconds` belongs to
        a killed writer: a temp file is removed, anything else quarantined.
        """
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            return
        if now - st.st_mtime < self.stale_seconds:
            return
        name = item.name
        if protocol.is_stale_temp(name) and stat.S_ISREG(st.st_mode):
            logger.warning(
                "removing %s/%s: a temp file of %d bytes a killed writer left %.0f s ago",
                self._new,
                name,
                st.st_size,
                now - st.st_mtime,
            )
            self._drop(name)
        else:
            self._quarantine(name, "a dot-named file that is not a record, left in new/")

    def _drop(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self._new, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._refused.add(name)
            logger.warning("cannot remove %s from %s: %s", name, self._new, exc)

    def _released(self, job: Job) -> None:
        """The decoder found a job's claimed record gone: let another record be claimed."""
        with self.lock:
            job.record = None
        self.request_scan()

    def _removed(self, names: list[str]) -> None:
        """These records have left ``new/``; a scan may look at those names again."""
        with self.lock:
            self._queued.difference_update(names)

    def _quarantine(self, name: str, reason: str) -> None:
        try:
            target = self.batch.quarantine(name, reason)
        except FileNotFoundError:
            return
        except OSError as exc:  # never abort the scan: remember it and go on
            self._refused.add(name)
            logger.warning("cannot quarantine %r from %s (%s): %s", name, self._new, reason, exc)
            return
        logger.warning("refused %r in %s: %s (moved to %s)", name, self._new, reason, target)
