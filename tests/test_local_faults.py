"""Faults on the embedded backend, with real processes, signals and a real full disk (issue 11)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor, JobFailedError, protocol
from boinc_executor.protocol.pack import handled_records
from tests import jobs

ROOT = str(Path(__file__).resolve().parents[1])


def pid_then_sleep(pid_file: str, seconds: float) -> str:
    """Job function: record the worker's pid, then take a while."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "good"


def wait_then_blob(gate: str, size: int) -> bytes:
    """Job function: wait for the test's signal, then return a result of ``size`` bytes."""
    jobs.wait_for_file(gate)
    return b"x" * size


def start_wait_then_die(started: str, gate: str) -> None:
    """Job function: say it runs, wait for the test's signal, then kill its worker."""
    Path(started).touch()
    jobs.wait_for_file(gate)
    os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to reap it.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


ORPHAN_MASTER = """
import sys
from boinc_executor import BoincExecutor
from tests import test_local_faults as t

batch_dir, pid_file = sys.argv[1:3]
if __name__ == "__main__":
    ex = BoincExecutor(max_workers=1, batch_dir=batch_dir)
    print(ex.batch_id, flush=True)
    ex.submit(t.pid_then_sleep, pid_file, 3.0).result()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_orphaned_worker_dies_with_its_master(tmp_path: Path) -> None:
    """Issue 11.10. Invariant: when the master is killed mid-job, its worker dies with it
    and never delivers a record; a resumed batch gets the good result, and the only
    record of the job in old/ is that good one, so a later replay returns it too."""
    batch, pid_file = tmp_path / "b", tmp_path / "pid"
    master = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_MASTER, str(batch), str(pid_file)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert master.stdout is not None
    batch_id = int(master.stdout.readline())
    master.stdout.close()
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    worker = int(pid_file.read_text())
    master.send_signal(signal.SIGKILL)
    master.wait()
    deadline = time.monotonic() + 5
    while _alive(worker):
        assert time.monotonic() < deadline, "the orphaned worker outlived its master"
        time.sleep(0.02)
    pid_file.unlink()
    with BoincExecutor.resume(batch_id, max_workers=1) as ex:
        assert list(ex.results(timeout=60)) == ["good"]
    time.sleep(3.5)  # past the moment the orphan would have finished its job
    records = [r.name for r in handled_records(batch).values()]
    records += [p.name for p in (batch / protocol.NEW).iterdir()]
    assert len(records) == 1, records
    with BoincExecutor.resume(batch_id, max_workers=1) as ex:
        assert list(ex.results(timeout=60)) == ["good"]


def test_retry_does_not_wait_behind_a_busy_worker(tmp_path: Path) -> None:
    """Issue 11.16. Invariant: a job never waits in the queue of a worker busy with a long
    job while another worker is idle, even when it is a retry whose worker died and
    the only live worker is the busy one at the moment it is re-queued."""
    gate = tmp_path / "gate"
    with BoincExecutor(max_workers=2, batch_dir=tmp_path / "b") as ex:
        long_job = ex.submit(jobs.wait_for_file, str(gate), "long")
        deadline = time.monotonic() + 30
        while not long_job.running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the long job has run for a while
        retried = ex.submit(jobs.kill_self_once, str(tmp_path / "marker"))
        assert retried.result(timeout=20) == "survived"
        assert not long_job.done()
        also = ex.submit(jobs.square, 5)  # and a fresh job goes to the idle worker too
        assert also.result(timeout=20) == 25
        assert not long_job.done()
        gate.touch()
        assert long_job.result(timeout=30) == "long"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test and unmounted after it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> None:
    """Fill the tmpfs to its last page (unbuffered page-sized writes until ENOSPC)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_full_disk_fails_the_queued_jobs_clearly(small_disk: Path, tmp_path: Path) -> None:
    """Issue 11.11. Invariant: with the disk full while jobs are queued, no worker or reader
    thread dies silently: every affected future fails with an error that says the
    record could not be written and what to do, none is stranded, and once space is
    freed a resume runs the same jobs to their results."""
    batch, gate = small_disk / "b", tmp_path / "gate"
    ex = BoincExecutor(max_workers=2, batch_dir=batch)
    futures = [ex.submit(wait_then_blob, str(gate), 200_000) for _ in range(8)]
    assert ex.flush(timeout=60)
    batch_id = ex.batch_id
    _fill(small_disk)
    gate.touch()
    for fut in futures:
        error = fut.exception(timeout=60)
        assert isinstance(error, JobFailedError), error
        assert "No space left on device" in str(error), error
        assert "free space" in str(error)
    ex.shutdown(wait=True)
    (small_disk / "filler").unlink()
    # The jobs that failed for want of space have error records: retry exactly those.
    with BoincExecutor.resume(batch_id, max_workers=2, retry_failed=True) as again:
        assert [len(v) for v in again.results(timeout=60)] == [200_000] * 8


def test_full_disk_as_a_worker_dies_strands_no_job(small_disk: Path, tmp_path: Path) -> None:
    """Issue 11.11, the path the issue saw: a worker dies mid-job while the disk is full.
    Invariants: each future resolves exactly once; the dead worker's jobs are re-queued,
    none is stranded, and the reader threads never die of ENOSPC: the dead worker's job
    (whose retry cannot even be laid out, nor its error record written) fails with a
    JobFailedError that says the disk is full, every other job with its value or the
    same clear error."""
    batch, gate, started = small_disk / "b", tmp_path / "gate", tmp_path / "started"
    with BoincExecutor(max_workers=2, batch_dir=batch) as ex:
        doomed = ex.submit(start_wait_then_die, str(started), str(gate))
        others = [ex.submit(wait_then_blob, str(gate), 200_000) for _ in range(6)]
        assert ex.flush(timeout=60)
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "the doomed job never started"
            time.sleep(0.02)
        _fill(small_disk)
        gate.touch()
        error = doomed.exception(timeout=60)
        assert type(error) is JobFailedError, error
        assert "No space left on device" in str(error) and "free space" in str(error), error
        assert "no error record could be written" in str(error), error
        for fut in others:
            problem = fut.exception(timeout=60)
            assert problem is None or "No space left on device" in str(problem), problem
        (small_disk / "filler").unlink()


def test_idle_worker_takes_a_job_queued_behind_a_long_one(tmp_path: Path) -> None:
    """Issue 11.16. Invariant: a job queued on a worker before its current job turned out
    long is taken back and run by a worker that becomes idle, while the long job runs."""
    gate = tmp_path / "gate"
    with BoincExecutor(max_workers=2, batch_dir=tmp_path / "b") as ex:
        assert list(ex.map(jobs.square, range(4))) == [0, 1, 4, 9]  # both workers are up
        long_job = ex.submit(jobs.wait_for_file, str(gate), "long")
        short = ex.submit(jobs.sleep_and_return, 0.3, "short")
        queued = [ex.submit(jobs.square, i) for i in range(3)]
        assert [f.result(timeout=20) for f in queued] == [0, 1, 4]
        assert short.result(timeout=20) == "short"
        assert not long_job.done()
        gate.touch()
        assert long_job.result(timeout=30) == "long"


def test_jobs_dealt_deep_behind_a_job_that_turns_long_all_move_to_the_idle_worker(
    tmp_path: Path,
) -> None:
    """Invariant: after a run of short jobs, a worker holds several jobs at once (dealt
    deep); when the one it runs turns long, every job queued behind it is taken back,
    one after the other, by the worker that is idle, and none waits for the long one."""
    gate = tmp_path / "gate"
    with BoincExecutor(max_workers=2, batch_dir=tmp_path / "b") as ex:
        assert list(ex.map(jobs.square, range(300))) == [i * i for i in range(300)]
        long_job = ex.submit(jobs.wait_for_file, str(gate), "long")
        queued = [ex.submit(jobs.square, i) for i in range(16)]
        assert [f.result(timeout=30) for f in queued] == [i * i for i in range(16)]
        assert not long_job.done()
        gate.touch()
        assert long_job.result(timeout=30) == "long"


def test_a_bug_in_handling_a_worker_restarts_it_and_loses_no_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: a future never hangs. An exception in the master's own handling of a
    worker (a bug: here one injected into dealing, right after the worker started)
    kills and replaces that worker; the jobs dealt to it are dealt again."""
    from boinc_executor.backends import local

    original = local.LocalBackend._rebalance
    failed: list[str] = []

    def rebalance(self: local.LocalBackend) -> None:
        if not failed and sys._getframe(1).f_code.co_name == "_run_worker":
            failed.append("once")
            raise RuntimeError("injected bug")
        original(self)

    monkeypatch.setattr(local.LocalBackend, "_rebalance", rebalance)
    with BoincExecutor(max_workers=2, batch_dir=tmp_path / "b") as ex:
        assert list(ex.map(jobs.square, range(20), timeout=120)) == [i * i for i in range(20)]
    assert failed == ["once"]
