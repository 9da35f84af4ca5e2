"""The embedded backend: local worker processes play the volunteers.

Used when no BOINC project is configured. It keeps BOINC's shape so code moves
to a real project unchanged::

    executor ──stage────────▶ BATCH_DIR/local/download/<program>   (one file per program)
             ──stage_input──▶ BATCH_DIR/local/inputs.pack          (appended; offsets journaled)
             ──submit───────▶ dispatcher ──"J job program pack offset size attempt"──▶ worker
    worker (local_worker.py): lay out BATCH_DIR/local/slots/<run>-<k>/ as the BOINC
            client does, run the real runner in it, rename its record into new/
    worker ──"D job record" / "F job why"──▶ reader thread
            ──▶ events.record_delivered / error record or events.failed
    dispatcher ──"X job"──▶ worker ──"W job"──▶ reader thread ──▶ dealt to another worker

In the steady state no file is created or deleted per job except the record the
protocol needs in ``new/`` (see :mod:`.local_worker`). Each worker is started
by the thread that reads it, and the thread lives as long as its worker, so
``PR_SET_PDEATHSIG`` ties the worker's life to its master's. Jobs are dealt to
the least busy worker, a few milliseconds of work deep at its recent pace (two
to eight jobs), never behind a job that has run for a while (``dealing.deal``),
and an idle worker takes a queued job back from a busy one: the busy worker is
asked for it (``X``, then a signal so that it reads the request while its long
job runs) and the job is dealt again only once that worker has given it back
(``W``), never on the dispatcher's view of what has started, which lags behind
the worker's (that would run a job twice).

A dealt job counts as started (its futures run and can no longer be
cancelled), as ``ProcessPoolExecutor`` counts a call moved to its call queue:
a worker runs its jobs in the order dealt, so the first one it holds is the
one it runs, and it says nothing when it starts one. That spares each job a
report and the master a wake-up.

Workers are plain ``python -m`` subprocesses rather than ``multiprocessing``
children: nothing re-imports the user's ``__main__``, and like a volunteer they
know only the files they are given. A worker that dies mid-job has that job
retried once; the second death delivers an error record.

Batch IDs come from a small registry (:mod:`.registry`), so
``BoincExecutor.resume(batch_id)`` finds a local batch from any directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from .. import protocol
from ..batch import BatchDir, Checkpoint, JournalEntry
from ..config import JobParams, state_home
from ..errors import JobFailedError
from ..protocol.inputpack import PackReader, PackWriter
from . import registry
from .base import Backend, BackendEvents
from .dealing import Dispatch, PendingJobs, WorkerSlot, deal, job_to_withdraw
from .local_slot import SPARE_DIR
from .local_worker import (
    STDOUT_FD_ENV,
    WITHDRAW_SIGNAL,
    explain_os_error,
    record_tag,
    slot_of_tag,
)

__all__ = ["LocalBackend"]

logger = logging.getLogger("boinc_executor")

_MAX_ATTEMPTS = 2  # a job whose worker dies is retried once
_WORKER_MODULE = "boinc_executor.backends.local_worker"


def _dup_stdout() -> int | None:
    """A copy of this process's fd 1 for a worker, or None when there is none."""
    try:
        return os.dup(1)
    except OSError:
        return None


# --------------------------------------------------------------------------- master side


class LocalBackend(Backend):
    """Runs jobs in local worker processes through the real runner and slot layout.

    Args:
        max_workers: number of worker processes (default: the CPU count).
    """

    kind = "local"
    poll_interval = 0.5
    default_chunksize = 1
    # Small hand-overs: a worker starts on the first jobs while the rest are staged.
    handover_size = 64
    announces_records = True  # each worker's D line names its record

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._pending = PendingJobs()
        self._workers: list[WorkerSlot] = []
        self._closing = False
        self._root = ""
        self._batch_dir: Path | None = None
        self._events: BackendEvents | None = None
        self._pack: PackWriter | None = None
        self._dealt: list[str] = []  # dealt since the last _announce()
        # Slots are named after this run, so an orphan of a killed master never shares one.
        self._run = f"{time.time_ns() // 1_000_000 % 10**10:x}{os.getpid():x}"

    # -- batches

    def create_batch(self, name: str, batch_dir: Path | None) -> tuple[int, Path]:
        """Allocate the next local batch ID and record its directory in the registry."""
        return registry.register(name, batch_dir)

    @property
    def batch_root(self) -> Path:
        """``<state home>/batches``: default batch directories and script claims."""
        return state_home() / "batches"

    def locate_batch(self, batch_id: int) -> Path:
        """Find a local batch's directory through the registry."""
        return registry.locate(batch_id)

    def reuse_records(self, names: list[str]) -> list[str]:
        """Lend each record back to the worker that delivered it (an ``R`` line per worker).

        The worker moves the file out of ``new/`` itself when it reuses it, so
        reuse costs the master no file operation (under the GIL, a rename and an
        lstat per record cost its decoder thread more than decoding the record). Records
        of another run, of a worker gone since, or written by the master are
        not taken.
        """
        by_slot: dict[str, list[str]] = {}
        others: list[str] = []
        for name in names:
            slot = self._slot_of(name)
            if slot is None:
                others.append(name)
            else:
                by_slot.setdefault(slot, []).append(name)
        with self._lock:
            live = {w.slot: w for w in self._workers if w.proc is not None}
            for slot, lent in by_slot.items():
                worker = live.get(slot)
                if worker is None or self._closing:
                    others += lent
                    continue
                worker.lend(lent)
                self._send(worker, "R\t" + "\t".join(lent) + "\n")
        return others

    def lends(self, name: str) -> bool:
        """Whether ``name`` is lent to a running worker, which will reuse or delete it."""
        slot = self._slot_of(name)
        with self._lock:
            return any(w.slot == slot and name in w.lent for w in self._workers if w.proc)

    @staticmethod
    def _slot_of(record: str) -> str | None:
        parsed = protocol.parse_record_name(record)
        return slot_of_tag(parsed[1]) if parsed is not None else None

    def attach(self, batch: BatchDir, checkpoint: Checkpoint, events: BackendEvents) -> None:
        """Prepare the download area and slots; drop slots a killed master left behind."""
        self._batch_dir = batch.path
        self._root = os.path.join(batch.path, "local")
        os.makedirs(os.path.join(self._root, "download"), exist_ok=True)
        slots = os.path.join(self._root, "slots")
        os.makedirs(slots, exist_ok=True)
        with os.scandir(slots) as entries:  # another run's: its workers died with it
            for entry in entries:
                shutil.rmtree(entry.path, ignore_errors=True)
        shutil.rmtree(os.path.join(self._root, SPARE_DIR), ignore_errors=True)  # and spares
        self._events = events

    # -- jobs

    def stage(self, name: str, data: bytes, *, shared: bool) -> None:
        """Write an input file into the local download area (immutable names)."""
        path = Path(self._root, "download", name)
        if not path.exists():
            protocol.atomic_write(path, data)

    def read_input(self, name: str, offset: int = -1, size: int = 0) -> bytes:
        """Read a staged input back: from the input pack at ``offset``, else from download/."""
        assert self._root is not None, "attach() first"
        if offset >= 0:
            reader = PackReader(self._root)
            try:
                return reader.read(name, offset, size)
            finally:
                reader.close()
        with open(os.path.join(self._root, "download", name), "rb") as fh:
            return fh.read()

    def stage_input(self, entry: JournalEntry, data: bytes) -> JournalEntry:
        """Append a job's data file to the input pack; the entry says where."""
        if self._pack is None:
            self._pack = PackWriter(self._root)
        offset = self._pack.append(data)
        return JournalEntry(
            entry.job, entry.i, entry.call, entry.n, entry.digest, entry.program,
            self._pack.name, offset, len(data),
        )  # fmt: skip

    def wait_staged(self) -> None:
        """Hand the appended inputs to the OS before their journal lines are written."""
        if self._pack is not None:
            self._pack.flush()

    def submit(self, jobs: Sequence[JournalEntry], params: JobParams) -> None:
        """Queue jobs for the workers; ``params`` only matter on BOINC."""
        with self._lock:
            self._pending.extend(jobs)
            self._start_workers()
            self._feed_all()
        self._announce()

    def wants_jobs_now(self) -> bool:
        """Whether no job is dealt or waiting: the workers are idle (or not started yet).

        Not just one idle worker: while jobs stream in, they are handed over in
        bulk by the collector thread, which costs less per job.
        """
        return not self._pending and not any(w.assigned for w in self._workers)

    def poll(self) -> None:
        """Give queued jobs of busy workers to idle ones (a job may have grown long)."""
        with self._lock:
            self._rebalance()

    def cancel(self, jobs: Collection[str]) -> None:
        """Drop jobs no worker has picked up yet."""
        with self._lock:
            self._pending.drop(jobs)

    def close(self, *, complete: bool, interrupted: bool = False) -> None:
        """Stop the workers: ask nicely, then kill the ones still busy.

        Interrupted, a worker is also told (SIGINT) to skip the jobs it has
        queued: it finishes and delivers the job it runs, then exits; jobs that
        never started have no record, so the next run submits them again.
        """
        with self._lock:
            self._closing = True
            self._pending.clear()
            workers = list(self._workers)
        for w in workers:
            if w.proc is None:
                continue
            with contextlib.suppress(OSError):
                if interrupted and w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGINT)
                if w.proc.stdin is not None:
                    w.proc.stdin.close()
        deadline = time.monotonic() + 5
        for w in workers:
            if w.thread is not None and w.thread is not threading.current_thread():
                w.thread.join(timeout=max(0.1, deadline - time.monotonic()))
            proc = w.proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if w.thread is not None and w.thread is not threading.current_thread():
                w.thread.join(timeout=5)
        if self._pack is not None:
            self._pack.close()
        for w in workers:
            shutil.rmtree(os.path.join(self._root, "slots", w.slot), ignore_errors=True)
            # Lent records a worker did not reuse: handled and packed.
            # (Only a worker that ran has any, and workers run only once attached.)
            if w.lent and self._batch_dir is not None:
                new = os.path.join(self._batch_dir, protocol.NEW)
                for name in w.lent:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(new, name))
            w.forget_lent()
        shutil.rmtree(os.path.join(self._root, SPARE_DIR), ignore_errors=True)

    # -- dispatching (called with self._lock held)

    def _start_workers(self) -> None:
        while len(self._workers) < self.max_workers and not self._closing:
            used = {w.slot for w in self._workers}
            k = next(k for k in range(len(used) + 1) if f"{self._run}-{k}" not in used)
            worker = WorkerSlot(f"{self._run}-{k}")
            self._workers.append(worker)
            # The thread starts the process: PR_SET_PDEATHSIG fires when the
            # *thread* that forked a worker ends, and this one lives as long as it.
            worker.thread = threading.Thread(
                target=self._run_worker, args=(worker,), name="boinc-executor-worker", daemon=True
            )
            worker.thread.start()

    def _spawn(self, worker: WorkerSlot) -> subprocess.Popen[bytes]:
        assert self._batch_dir is not None
        env = dict(os.environ, BOINC_EXECUTOR_SYS_PATH=json.dumps(sys.path))
        argv = [sys.executable, "-m", _WORKER_MODULE, str(self._batch_dir), worker.slot]
        # The worker's fd 1 is the protocol pipe: hand it this process's stdout
        # under another number, so what a task prints reaches our stdout.
        user_out = _dup_stdout()
        if user_out is not None:
            env[STDOUT_FD_ENV] = str(user_out)
        try:
            return subprocess.Popen(
                [*argv, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                pass_fds=() if user_out is None else (user_out,),
            )
        finally:
            if user_out is not None:
                os.close(user_out)

    def _feed_all(self) -> None:
        """Deal pending jobs (:func:`~.dealing.deal`) and send each worker its lines."""
        if not self._pending:
            return
        lines = deal(self._workers, self._pending, time.monotonic(), self._dealt)
        for worker, batch in lines.items():
            self._send(worker, "".join(batch))

    def _announce(self) -> None:
        """Report the jobs dealt so far as started (called without the lock held)."""
        assert self._events is not None
        with self._lock:
            dealt, self._dealt = self._dealt, []
        started = self._events.started
        for job in dealt:
            started(job)

    def _rebalance(self) -> None:
        """Ask a worker busy with a long job for a queued job, on behalf of an idle one.

        The job moves only when the busy worker gives it back (``W``, see
        :meth:`_given_back`): by the time the request arrives, the worker may
        have started it, and then it runs there.
        """
        if self._pending:
            return
        asked = job_to_withdraw(self._workers, time.monotonic())
        if asked is None:
            return
        busy, job = asked
        busy.withdrawing.add(job)
        self._send(busy, f"X\t{job}\n")
        if WITHDRAW_SIGNAL is not None and busy.proc is not None:
            with contextlib.suppress(OSError):  # it died: its thread re-queues the jobs
                busy.proc.send_signal(WITHDRAW_SIGNAL)  # read it now, not after the job

    def _given_back(self, worker: WorkerSlot, job: str) -> None:
        """A worker gave a queued job back: deal it first to the least busy worker."""
        worker.withdrawing.discard(job)
        dispatch = worker.assigned.pop(job, None)
        if dispatch is None or self._closing:
            return
        self._pending.put_back(job, dispatch)
        self._feed_all()

    @staticmethod
    def _send(worker: WorkerSlot, text: str) -> None:
        try:
            assert worker.proc is not None and worker.proc.stdin is not None
            worker.proc.stdin.write(text.encode())
            worker.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the worker died (or is being closed); its thread re-queues the jobs

    # -- one thread per worker slot

    def _run_worker(self, worker: WorkerSlot) -> None:
        """Start the slot's worker, read its reports, and replace it when it dies."""
        while True:
            with self._lock:
                if self._closing:
                    return
                try:
                    worker.proc = self._spawn(worker)
                except OSError as exc:
                    logger.error("cannot start a local worker: %s", exc)
                    self._workers.remove(worker)
                    return
            try:
                with self._lock:
                    self._feed_all()
                    self._rebalance()
                self._announce()
                self._read_reports(worker)
            except Exception:  # never lose a worker's jobs to a bug in handling it
                logger.exception("handling local worker %s failed; restarting it", worker.slot)
                with contextlib.suppress(OSError):
                    worker.proc.kill()  # its jobs are dealt again (_worker_died)
            if not self._worker_died(worker):
                return

    def _read_reports(self, worker: WorkerSlot) -> None:
        assert worker.proc is not None and worker.proc.stdout is not None
        events = self._events
        assert events is not None
        for raw in worker.proc.stdout:
            kind, _, rest = raw.decode().rstrip("\n").partition(" ")
            job, _, detail = rest.partition(" ")
            if kind == "W":
                with self._lock:
                    self._given_back(worker, job)
                    self._rebalance()
                self._announce()
            elif kind in ("D", "F"):
                with self._lock:
                    dispatch = worker.done(job, time.monotonic())
                    worker.withdrawing.discard(job)  # asked back too late: it ran here
                    self._feed_all()
                    self._rebalance()
                if self._dealt:
                    self._announce()
                if kind == "D":
                    events.record_delivered(detail)
                elif dispatch is not None:
                    self._undeliverable(job, worker.slot, dispatch.attempt, detail)

    def _worker_died(self, worker: WorkerSlot) -> bool:
        """Re-queue a dead worker's jobs; returns whether to start a replacement."""
        assert worker.proc is not None
        if worker.proc.stdout is not None:
            worker.proc.stdout.close()
        code = worker.proc.wait()
        lost: list[tuple[str, Dispatch]] = []
        with self._lock:
            if worker.proc.stdin is not None:
                with contextlib.suppress(OSError):  # broken pipe: the worker is gone anyway
                    worker.proc.stdin.close()
            worker.proc = None
            if self._closing:
                self._workers.remove(worker)
                return False
            # Jobs it had not started go back unchanged; the one it died in costs an attempt.
            running = next(iter(worker.assigned), None)
            for job, queued in reversed(worker.assigned.items()):
                dispatch = queued._replace(attempt=queued.attempt + 1) if job == running else queued
                if dispatch.attempt >= _MAX_ATTEMPTS:
                    lost.append((job, dispatch))
                    continue
                self._pending.put_back(job, dispatch)
            worker.assigned.clear()
            worker.withdrawing.clear()
            worker.forget_lent()  # those it did not reuse: a scan deletes them
            self._feed_all()
        self._announce()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        for job, dispatch in lost:
            message = (
                f"the local worker running job {job} died ({how}) on each of {_MAX_ATTEMPTS} "
                "attempts; the function probably crashes the interpreter or exhausts memory"
            )
            tag = record_tag(worker.slot, dispatch.attempt)
            self._deliver_error(job, tag, "JobLostError", message, code)
        return True

    def _undeliverable(self, job: str, slot: str, attempt: int, why: str) -> None:
        """A worker could not write the job's record (a full disk): try once more from here."""
        message = (
            f"the local worker could not deliver the record of job {job} into new/: {why}. "
            "If the disk is full, free space, then run the script again or "
            "BoincExecutor.resume() to run the job again"
        )
        self._deliver_error(job, record_tag(slot, attempt), "JobFailedError", message, 1)

    def _deliver_error(self, job: str, tag: str, kind: str, message: str, code: int) -> None:
        """Deliver an error record for a job; if even that fails, fail its futures directly."""
        assert self._batch_dir is not None and self._events is not None
        info = protocol.failure_info(kind, message, exit_status=code)
        info["host"] = protocol.host_name()
        record = protocol.encode_error_record(job, info, source="local")
        tag = f"{tag}-master"  # the worker's own record may still arrive under its tag
        try:
            protocol.deliver_record(self._batch_dir, job, tag, record)
        except OSError as exc:
            error = JobFailedError(
                f"{message} (and no error record could be written into "
                f"{self._batch_dir / protocol.NEW} either: {explain_os_error(exc)})"
            )
            if self._events.failed is None:
                logger.error("%s", error)
            else:
                self._events.failed(job, error)
            return
        self._events.record_delivered(protocol.record_file_name(job, tag))
