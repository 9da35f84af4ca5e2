"""The embedded backend's worker, driven over its pipe protocol as the dispatcher drives it.

The dispatcher's view of which job a worker has started always lags behind the
worker's own. These tests put a withdrawal (``X`` and the signal that follows
it) on both sides of a job's start and check the worker's answer, which is what
makes taking a job back safe: a job is given back (``W``) only if it never
started, and a started job runs to its record. CI once ran a job twice because
the dispatcher dealt a withdrawn job again without waiting for that answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boinc_executor import protocol
from boinc_executor.protocol.decoding import TypePolicy
from boinc_executor.protocol.inputpack import PackWriter
from tests import jobs

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGURG"), reason="POSIX signals")

ROOT = str(Path(__file__).resolve().parents[1])


class WorkerPipe:
    """One real worker process on a hand-built batch directory, and its report lines."""

    def __init__(self, batch_dir: Path) -> None:
        self.batch_dir = batch_dir
        self.local = batch_dir / "local"
        (self.local / "download").mkdir(parents=True)
        (batch_dir / protocol.NEW).mkdir()
        self._programs: dict[object, str] = {}
        self._pack = PackWriter(str(self.local))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "boinc_executor.backends.local_worker",
             str(batch_dir), "s0", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )  # fmt: skip

    def send_job(self, job: str, fn: object, *args: object) -> None:
        program = self._programs.get(fn)
        if program is None:
            program = self._programs[fn] = f"prog{len(self._programs)}.pkl"
            (self.local / "download" / program).write_bytes(protocol.encode_program(fn))
        data = protocol.encode_data(job, [(args, {})])
        offset = self._pack.append(data)
        self._pack.flush()
        self.send(f"J\t{job}\t{program}\tinputs.pack\t{offset}\t{len(data)}\t0")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def withdraw(self, job: str) -> None:
        """Ask for a job back as the dispatcher does: the line, then the signal."""
        self.send(f"X\t{job}")
        self.proc.send_signal(signal.SIGURG)

    def report(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the worker exited"
        return line.rstrip("\n")

    def close(self) -> None:
        self._pack.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerPipe]:
    pipe = WorkerPipe(tmp_path / "batch")
    try:
        yield pipe
    finally:
        pipe.close()


LONG, QUEUED, AFTER = (protocol.job_name("wt", 1, i) for i in range(3))


def _records(batch_dir: Path, job: str) -> list[str]:
    return [n for n in os.listdir(batch_dir / protocol.NEW) if n.startswith(job + ".")]


def _start_long_job(worker: WorkerPipe, tmp_path: Path) -> tuple[Path, Path]:
    """Deal LONG and wait until its code runs; returns (its gate, a log for the next job)."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    worker.send_job(LONG, jobs.touch_then_wait, str(started), str(gate), "long")
    jobs.wait_for_file(str(started), timeout=30)
    return gate, tmp_path / "log"


def test_a_queued_job_asked_back_is_given_back_at_once_and_never_runs(
    worker: WorkerPipe, tmp_path: Path
) -> None:
    gate, log = _start_long_job(worker, tmp_path)
    worker.send_job(QUEUED, jobs.log_and_square, str(log), 3)
    worker.withdraw(QUEUED)
    assert worker.report() == f"W {QUEUED}"  # at once: the long job still runs
    gate.touch()
    assert worker.report().startswith(f"D {LONG} ")
    worker.send_job(AFTER, jobs.square, 4)
    assert worker.report().startswith(f"D {AFTER} ")
    assert not log.exists(), "a job given back ran anyway"
    assert _records(worker.batch_dir, QUEUED) == []


def test_a_job_asked_back_after_it_started_runs_to_its_record(
    worker: WorkerPipe, tmp_path: Path
) -> None:
    """The request comes too late: the dispatcher cannot know the job has started."""
    gate, log = _start_long_job(worker, tmp_path)
    worker.withdraw(LONG)
    gate.touch()
    done = worker.report()
    assert done.startswith(f"D {LONG} "), done
    # No "W": the next report is the next job's.
    worker.send_job(QUEUED, jobs.log_and_square, str(log), 5)
    assert worker.report().startswith(f"D {QUEUED} ")
    assert log.read_text() == "5\n"
    assert len(_records(worker.batch_dir, LONG)) == 1


def test_lent_records_become_output_files_and_unfit_ones_are_deleted(
    worker: WorkerPipe, tmp_path: Path
) -> None:
    """A handled record lent back (R) becomes the next job's output file, moved
    straight out of new/ and rewritten in place; one with a second hard link, over
    1 MiB, a symlink or a FIFO is deleted from new/ and never written, nor what it
    points at; nothing but a record name in new/ is touched."""
    from boinc_executor.backends.local_slot import MAX_SPARE_BYTES

    new = worker.batch_dir / protocol.NEW

    def plant(index: int, data: bytes = b"a handled record") -> str:
        name = protocol.record_file_name(protocol.job_name("wt", 1, index), "local-s0-0")
        (new / name).write_bytes(data)
        return name

    good, big, linked = plant(10), plant(11, b"x" * (MAX_SPARE_BYTES + 1)), plant(12)
    outside = tmp_path / "outside"
    os.link(new / linked, outside)
    target = tmp_path / "target"
    target.write_bytes(b"not yours")
    symlink = protocol.record_file_name(protocol.job_name("wt", 1, 13), "local-s0-0")
    (new / symlink).symlink_to(target)
    fifo = protocol.record_file_name(protocol.job_name("wt", 1, 14), "local-s0-0")
    os.mkfifo(new / fifo)
    (tmp_path / "batch" / "victim").write_bytes(b"keep")
    inode = (new / good).stat().st_ino
    # Taken newest first: every unfit one is moved out of the way before the good one.
    worker.send("R\t" + "\t".join([good, big, linked, fifo, symlink, "../victim"]))
    worker.send_job(LONG, jobs.square, 6)
    done = worker.report()
    assert done.startswith(f"D {LONG} "), done
    record = new / done.split()[2]
    assert record.stat().st_ino == inode  # the lent file, not a new one
    assert protocol.decode_result(
        record.read_bytes(), TypePolicy(), expect_job=LONG, expect_calls=1
    ).outcomes == [(True, 36)]
    assert sorted(os.listdir(new)) == [record.name]
    assert outside.read_bytes() == b"a handled record"  # never written through the link
    assert target.read_bytes() == b"not yours"
    assert (tmp_path / "batch" / "victim").read_bytes() == b"keep"


def test_an_idle_worker_moves_its_lent_records_out_of_new_and_reuses_them_later(
    worker: WorkerPipe,
) -> None:
    """Lent records wait in new/ only while jobs keep coming: a worker with nothing to
    run moves them to its spare directory, so an idle executor's new/ holds only
    records to handle, and the next job still rewrites one of them."""
    new = worker.batch_dir / protocol.NEW
    names = [
        protocol.record_file_name(protocol.job_name("wt", 1, i), "local-s0-0") for i in (20, 21)
    ]
    for name in names:
        (new / name).write_bytes(b"a handled record")
    inodes = {(new / name).stat().st_ino for name in names}
    worker.send("R\t" + "\t".join(names))
    deadline = time.monotonic() + 30
    while os.listdir(new):
        assert time.monotonic() < deadline, f"lent records stayed in new/: {os.listdir(new)}"
        time.sleep(0.02)
    worker.send_job(LONG, jobs.square, 7)
    done = worker.report()
    assert done.startswith(f"D {LONG} "), done
    assert (new / done.split()[2]).stat().st_ino in inodes


def test_a_withdrawal_signal_is_never_lost_while_the_pipe_is_read_or_a_job_laid_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the master asks for one queued job at a time, each with an ``X`` line
    and a signal. A signal that came while the handler of the previous one still read the
    pipe (CPython runs it nested, between the handler's steps), or while the next job was
    being laid out, was dropped: its ``X`` stayed unread until the long job ended, and no
    other job moved meanwhile. Each must lead to one more read of the pipe."""
    from boinc_executor.backends.local_worker import _Worker

    (tmp_path / protocol.NEW).mkdir()
    report_r, report_w = os.pipe()
    worker = _Worker(str(tmp_path), "s0", os.getpid(), report_w)
    reads: list[bool] = []
    nested = [signal.SIGURG]  # one signal arrives while the first read runs

    def read(block: bool) -> None:
        reads.append(block)
        if nested:
            worker.on_withdraw_signal(nested.pop(), None)

    monkeypatch.setattr(worker, "_read", read)
    worker._in_job = True  # the job's own code runs
    worker.on_withdraw_signal(signal.SIGURG, None)
    assert reads == [False, False] and worker._in_job
    reads.clear()
    worker._in_job = False  # the next job is being laid out
    worker.on_withdraw_signal(signal.SIGURG, None)
    assert reads == []
    worker._in_job = True
    worker._answer_signals()  # as the job's code starts
    assert reads == [False]
    os.close(report_r)
    os.close(report_w)
