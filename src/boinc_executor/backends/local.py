"""The embedded backend: local worker processes play the volunteers.

Used when no BOINC project is configured. It keeps BOINC's shape so code moves
to a real project unchanged::

    executor ──stage──▶ BATCH_DIR/local/download/<physical name>      (the download hierarchy)
             ──submit─▶ dispatcher ──"job\\tprogram\\tdata\\tattempt"──▶ worker (stdin)
    worker: lay out BATCH_DIR/local/slots/<k>/ as the BOINC client does
            (program.pkl, data.pkl, init_data.xml), run the real runner on it,
            then deliver slot/result.pkl into BATCH_DIR/new/ as the assimilator does
    worker ──"S job" / "D job"──▶ reader thread ──▶ events.started / events.wake

Workers are plain ``python -m boinc_executor.backends.local`` subprocesses rather than
``multiprocessing`` children: nothing re-imports the user's ``__main__``, and
like a volunteer they know only the files they are given. A worker that dies
mid-job has that job retried once; the second death delivers an error record.

Batch IDs come from a small registry under :func:`~boinc_executor.config.state_home`
so ``BoincExecutor.resume(batch_id)`` finds a local batch from any directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import IO

import filelock

from .. import protocol
from ..batch import BatchDir, Checkpoint, JournalEntry
from ..config import JobParams, state_home
from ..errors import BatchNotFoundError
from .base import Backend, BackendEvents

__all__ = ["LocalBackend"]

_PREFETCH = 2  # jobs queued per worker, so a worker never waits on a round trip
_MAX_ATTEMPTS = 2  # a job whose worker dies is retried once
_STDOUT_FD_ENV = "BOINC_EXECUTOR_STDOUT_FD"  # the master's stdout, as the worker inherits it


def _dup_stdout() -> int | None:
    """A copy of this process's fd 1 for a worker, or None when there is none."""
    try:
        return os.dup(1)
    except OSError:
        return None


# --------------------------------------------------------------------------- registry


def _registry() -> Path:
    path = state_home() / "registry"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _register(name: str, batch_dir: Path | None) -> tuple[int, Path]:
    registry = _registry()
    with filelock.FileLock(registry / ".lock", timeout=30):
        counter = registry / "last_id"
        try:
            last = int(counter.read_text())
        except (FileNotFoundError, ValueError):
            last = 0
        batch_id = last + 1
        protocol.atomic_write(counter, str(batch_id).encode())
    path = batch_dir if batch_dir is not None else state_home() / "batches" / str(batch_id)
    record = {"batch_id": batch_id, "name": name, "batch_dir": str(path.resolve())}
    protocol.atomic_write(registry / f"{batch_id}.json", json.dumps(record).encode())
    return batch_id, path


# --------------------------------------------------------------------------- master side


class _Worker:
    """One worker process and the jobs assigned to it."""

    def __init__(self, proc: subprocess.Popen[bytes], slot: int) -> None:
        self.proc = proc
        self.slot = slot
        self.assigned: OrderedDict[str, tuple[str, int]] = (
            OrderedDict()
        )  # job -> (program, attempt)
        self.started: set[str] = set()
        self.reader: threading.Thread | None = None


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

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        # job -> (program file, attempt); the data file's name follows from the job's.
        self._pending: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._known: set[str] = set()  # jobs queued or running, so a replayed submit is a no-op
        self._workers: list[_Worker] = []
        self._closing = False
        self._root: Path | None = None
        self._batch_dir: Path | None = None
        self._events: BackendEvents | None = None

    # -- batches

    def create_batch(self, name: str, batch_dir: Path | None) -> tuple[int, Path]:
        """Allocate the next local batch ID and record its directory in the registry."""
        return _register(name, batch_dir)

    def locate_batch(self, batch_id: int) -> Path:
        """Find a local batch's directory through the registry."""
        record = _registry() / f"{batch_id}.json"
        try:
            path = Path(json.loads(record.read_text())["batch_dir"])
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise BatchNotFoundError(
                f"no local batch {batch_id} in the registry at {record.parent}; "
                "check the ID, or set BOINC_EXECUTOR_HOME to the registry it was created under"
            ) from exc
        if not (path / protocol.CHECKPOINT).is_file():
            raise BatchNotFoundError(
                f"local batch {batch_id} was in {path}, which no longer holds its checkpoint"
            )
        return path

    def attach(self, batch: BatchDir, checkpoint: Checkpoint, events: BackendEvents) -> None:
        """Prepare the download area and slot directories inside the batch directory."""
        self._batch_dir = batch.path
        self._root = batch.path / "local"
        (self._root / "download").mkdir(parents=True, exist_ok=True)
        (self._root / "slots").mkdir(parents=True, exist_ok=True)
        self._events = events

    # -- jobs

    def stage(self, name: str, data: bytes, *, shared: bool) -> None:
        """Write an input file into the local download area (immutable names)."""
        assert self._root is not None, "attach() first"
        path = self._root / "download" / name
        if not path.exists():
            protocol.atomic_write(path, data)

    def submit(self, jobs: Sequence[JournalEntry], params: JobParams) -> None:
        """Queue jobs for the workers; ``params`` only matter on BOINC."""
        with self._lock:
            for job in jobs:
                if job.job not in self._known:
                    self._known.add(job.job)
                    self._pending[job.job] = (sys.intern(job.program), 0)
            self._start_workers()
            self._feed_all()

    def cancel(self, jobs: Collection[str]) -> None:
        """Drop jobs no worker has picked up yet."""
        with self._lock:
            for job in jobs:
                if self._pending.pop(job, None) is not None:
                    self._known.discard(job)

    def close(self, *, complete: bool) -> None:
        """Stop the workers: ask nicely, then kill the ones still busy."""
        with self._lock:
            self._closing = True
            self._pending.clear()
            workers = list(self._workers)
        for w in workers:
            try:
                assert w.proc.stdin is not None
                w.proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            if w.reader is not None and w.reader is not threading.current_thread():
                w.reader.join(timeout=5)
        if self._root is not None:
            shutil.rmtree(self._root / "slots", ignore_errors=True)

    # -- dispatching (called with self._lock held)

    def _start_workers(self) -> None:
        assert self._batch_dir is not None
        while len(self._workers) < self.max_workers and not self._closing:
            slot = self._free_slot()
            env = dict(os.environ, BOINC_EXECUTOR_SYS_PATH=json.dumps(sys.path))
            # The worker's fd 1 is the protocol pipe: hand it this process's stdout
            # under another number, so what a task prints reaches our stdout.
            user_out = _dup_stdout()
            if user_out is not None:
                env[_STDOUT_FD_ENV] = str(user_out)
            try:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "boinc_executor.backends.local",
                        str(self._batch_dir),
                        str(slot),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                    pass_fds=() if user_out is None else (user_out,),
                )
            finally:
                if user_out is not None:
                    os.close(user_out)
            worker = _Worker(proc, slot)
            self._workers.append(worker)
            worker.reader = threading.Thread(
                target=self._read_worker, args=(worker,), name="boinc-executor-worker", daemon=True
            )
            worker.reader.start()

    def _free_slot(self) -> int:
        used = {w.slot for w in self._workers}
        return min(set(range(len(used) + 1)) - used)

    def _feed_all(self) -> None:
        for worker in self._workers:
            self._feed(worker)

    def _feed(self, worker: _Worker) -> None:
        lines = []
        while self._pending and len(worker.assigned) < _PREFETCH:
            job, (program, attempt) = self._pending.popitem(last=False)
            worker.assigned[job] = (program, attempt)
            lines.append(f"{job}\t{program}\t{protocol.data_file_name(job)}\t{attempt}\n")
        if lines:
            try:
                assert worker.proc.stdin is not None
                worker.proc.stdin.write("".join(lines).encode())
                worker.proc.stdin.flush()
            except OSError:
                pass  # the worker died; its reader thread re-queues the jobs

    # -- worker events (reader threads)

    def _read_worker(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None and self._events is not None
        for raw in worker.proc.stdout:
            kind, _, job = raw.decode().rstrip("\n").partition(" ")
            if kind == "S":
                worker.started.add(job)
                self._events.started(job)
            elif kind == "D":
                with self._lock:
                    worker.assigned.pop(job, None)
                    worker.started.discard(job)
                    self._known.discard(job)
                    self._feed(worker)
                self._events.wake()
        worker.proc.stdout.close()
        code = worker.proc.wait()
        self._worker_died(worker, code)

    def _worker_died(self, worker: _Worker, code: int) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            if self._closing:
                return
            try:
                assert worker.proc.stdin is not None
                worker.proc.stdin.close()
            except OSError:
                pass  # the pipe is broken: the worker is gone anyway
            # Jobs it had not started go back unchanged; the one it died in costs an attempt.
            for job, (program, tried) in reversed(worker.assigned.items()):
                attempt = tried + 1 if job in worker.started else tried
                if attempt >= _MAX_ATTEMPTS:
                    self._known.discard(job)
                    self._deliver_lost(job, code)
                    continue
                self._pending[job] = (program, attempt)
                self._pending.move_to_end(job, last=False)
            self._start_workers()
            self._feed_all()
        assert self._events is not None
        self._events.wake()

    def _deliver_lost(self, job: str, code: int) -> None:
        assert self._batch_dir is not None
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        info = protocol.failure_info(
            "JobLostError",
            f"the local worker running job {job} died ({how}) on each of {_MAX_ATTEMPTS} attempts; "
            "the function probably crashes the interpreter or exhausts memory",
            exit_status=code,
        )
        info["host"] = protocol.host_name()
        record = protocol.encode_error_record(job, info, source="local")
        protocol.deliver_record(self._batch_dir, job, "lost", record)


# --------------------------------------------------------------------------- worker side


def _lay_out_slot(
    slot: Path, download: Path, *, job: str, program: str, data: str, attempt: int
) -> None:
    """Lay a job out as the BOINC client does in ``<copy_file/>`` mode (boinc-facts §6)."""
    # Empty the slot rather than re-create it: on common file systems rmdir+mkdir
    # costs more than the whole job (about 1 ms against 0.1 ms for the unlinks).
    slot.mkdir(parents=True, exist_ok=True)
    with os.scandir(slot) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    for physical, open_name in ((program, protocol.OPEN_PROGRAM), (data, protocol.OPEN_DATA)):
        # A hard link is a real copy for every purpose the runner has, without the bytes.
        try:
            os.link(download / physical, slot / open_name)
        except OSError:
            shutil.copyfile(download / physical, slot / open_name)
    (slot / "init_data.xml").write_text(
        "<app_init_data>\n"
        f"<wu_name>{job}</wu_name>\n<result_name>{job}_{attempt}</result_name>\n"
        f"<slot>{slot.name}</slot>\n<project_dir>{download.parent}</project_dir>\n"
        "</app_init_data>\n"
    )


def _deliver(batch_dir: Path, slot: Path, job: str, attempt: int, code: int) -> None:
    """Move the slot's output into ``new/`` as the assimilator would, or report its absence."""
    tag = f"local-{attempt}"
    output = slot / protocol.OPEN_RESULT
    finished = (slot / protocol.FINISH_FILE).exists()
    if code == 0 and finished and output.is_file():
        os.replace(output, batch_dir / protocol.NEW / protocol.record_file_name(job, tag))
        return
    info = protocol.failure_info(
        "JobFailedError",
        f"the runner for job {job} exited with code {code} without a result record",
        exit_status=code,
    )
    info["host"] = protocol.host_name()
    protocol.deliver_record(
        batch_dir, job, tag, protocol.encode_error_record(job, info, source="local")
    )


def _worker_main(batch_dir: Path, slot_index: int) -> int:
    """Run jobs read from stdin until it closes; report on the saved stdout."""
    from ..volunteer.runner import run_slot

    # A ^C in the terminal reaches the whole process group: let the master decide
    # (it cancels what has not started); a job already running finishes and reports.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    extra = os.environ.get("BOINC_EXECUTOR_SYS_PATH")
    if extra:
        sys.path[:] = [p for p in json.loads(extra) if isinstance(p, str)]
    # The protocol owns the original stdout; user output goes to the master's stdout
    # (handed over under another fd), or to stderr when the master has none.
    report: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    user_out = os.environ.pop(_STDOUT_FD_ENV, "")
    if user_out.isdigit():
        os.dup2(int(user_out), 1)
        os.close(int(user_out))
    else:
        os.dup2(2, 1)
    slot = batch_dir / "local" / "slots" / str(slot_index)
    download = batch_dir / "local" / "download"
    for line in sys.stdin:
        job, program, data, attempt_text = line.rstrip("\n").split("\t")
        attempt = int(attempt_text)
        report.write(f"S {job}\n")
        report.flush()
        try:
            _lay_out_slot(slot, download, job=job, program=program, data=data, attempt=attempt)
            code = run_slot(slot)
        except OSError as exc:
            print(f"boinc-executor worker: cannot lay out job {job}: {exc}", file=sys.stderr)
            code = 1
        _deliver(batch_dir, slot, job, attempt, code)
        report.write(f"D {job}\n")
        report.flush()
    shutil.rmtree(slot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(Path(sys.argv[1]), int(sys.argv[2])))
