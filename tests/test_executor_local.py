"""BoincExecutor on the embedded backend: what goes beyond the shared behaviour suite."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from boinc_executor import (
    BatchLockedError,
    BatchMismatchError,
    BatchNotFoundError,
    BoincExecutor,
    ConfigError,
    JobLostError,
    protocol,
)
from boinc_executor.errors import RemoteTraceback
from boinc_executor.protocol.pack import handled_records
from tests import jobs


def test_function_module_exception_comes_back_as_itself(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        with pytest.raises(jobs.CustomError, match="custom boom") as info:
            ex.submit(jobs.raise_custom, "custom boom").result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_custom" in str(cause) and "### Worker on host" in str(cause)


def test_killed_worker_is_retried_once(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        assert (
            ex.submit(jobs.kill_self_once, str(tmp_path / "marker")).result(timeout=60)
            == "survived"
        )
        with pytest.raises(JobLostError, match="died"):
            ex.submit(jobs.kill_self).result(timeout=60)
        assert ex.submit(jobs.square, 3).result(timeout=60) == 9  # the pool recovered


def test_unpicklable_call_fails_its_future_clearly(tmp_path: Path) -> None:
    import threading

    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        future = ex.submit(jobs.identity, threading.Lock())
        with pytest.raises(TypeError, match="cannot be pickled"):
            future.result(timeout=10)
        with pytest.raises(TypeError, match="could not be pickled"):
            ex.submit(jobs.return_lock).result(timeout=60)


def test_task_output_reaches_stdout_and_does_not_break_results(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        assert ex.submit(jobs.print_and_return, 5).result(timeout=60) == 5
    assert "hello from 5" in capfd.readouterr().out


def test_second_executor_on_same_batch_dir_is_refused(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b"):
        with pytest.raises(BatchLockedError, match=f"pid {os.getpid()}"):
            BoincExecutor(max_workers=1, batch_dir=tmp_path / "b")


def test_changed_input_on_replay_is_an_error(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        assert list(ex.map(jobs.square, [1, 2])) == [1, 4]
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        assert ex.submit(jobs.square, 1).result(timeout=60) == 1
        with pytest.raises(BatchMismatchError, match="new batch_dir"):
            ex.submit(jobs.square, 3)


def test_replay_returns_results_without_running_again(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with BoincExecutor(max_workers=2, batch_dir=tmp_path / "b") as ex:
        first = list(ex.map(jobs.log_and_square, [str(log)] * 5, range(5)))
    with BoincExecutor(max_workers=2, batch_dir=tmp_path / "b") as ex:
        again = list(ex.map(jobs.log_and_square, [str(log)] * 5, range(5)))
        assert ex.batch_id == int(
            ex.batch_dir.joinpath("pyboinc_checkpoint")
            .read_text()
            .split('"batch_id": ')[1]
            .split(",")[0]
        )
    assert first == again == [x * x for x in range(5)]
    assert sorted(log.read_text().split()) == [str(x) for x in range(5)]


def test_resume_from_another_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with BoincExecutor(max_workers=2, batch_dir=tmp_path / "b") as ex:
        batch_id = ex.batch_id
        list(ex.map(jobs.square, range(6), chunksize=4))
        ex.submit(jobs.raise_value_error, "late")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with BoincExecutor.resume(batch_id, max_workers=1) as ex:
        assert len(ex.futures) == 7
        values = [f.result(timeout=60) for f in ex.futures[:6]]
        assert values == [x * x for x in range(6)]
        with pytest.raises(ValueError, match="late"):
            ex.futures[6].result(timeout=60)
        assert list(itertools.islice(ex.results(), 6)) == values


def test_resume_reruns_jobs_that_never_finished(tmp_path: Path) -> None:
    ex = BoincExecutor(max_workers=1, batch_dir=tmp_path / "b")
    batch_id = ex.batch_id
    gate = tmp_path / "gate"
    ex.submit(jobs.wait_for_file, str(gate), "blocked")
    ex.submit(jobs.square, 4)
    journal = tmp_path / "b" / "journal.jsonl"
    deadline = time.monotonic() + 30
    while not (journal.exists() and journal.read_text().count("\n") == 2):
        assert time.monotonic() < deadline, "the jobs were never journaled"
        time.sleep(0.01)
    # Abandon the executor as a killed master would: jobs journaled, nothing delivered.
    ex._backend.close(complete=False)
    ex._batch.close()
    gate.touch()
    with BoincExecutor.resume(batch_id, max_workers=1) as resumed:
        assert list(resumed.results(timeout=60)) == ["blocked", 16]


def test_resume_of_unknown_batch(tmp_path: Path) -> None:
    with pytest.raises(BatchNotFoundError, match="no local batch 999"):
        BoincExecutor.resume(999)
    with pytest.raises(BatchNotFoundError):
        BoincExecutor.resume(0)


def test_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="max_workers"):
        BoincExecutor(max_workers=0)
    with pytest.raises(ConfigError, match="prefix"):
        BoincExecutor(prefix="Bad-Prefix")
    with pytest.raises(ConfigError, match="not a directory"):
        BoincExecutor(project_dir=tmp_path / "missing")
    monkeypatch.setenv("PYBOINC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="PYBOINC_DIR"):
        BoincExecutor()
    monkeypatch.delenv("PYBOINC_DIR")
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(jobs.square, [1], chunksize=0)
        with pytest.raises(ValueError, match="buffersize"):
            ex.map(jobs.square, [1], buffersize=0)
        with pytest.raises(TypeError, match="callable"):
            ex.submit(42)  # type: ignore[arg-type]


def test_default_batch_dir_is_removed_after_a_complete_run(
    tmp_path: Path, _isolated_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="boinc_executor")
    with BoincExecutor(max_workers=1) as ex:
        path = ex.batch_dir
        assert path.is_relative_to(_isolated_state)
        assert ex.submit(jobs.square, 2).result(timeout=60) == 4
    assert not path.exists()
    assert f"BoincExecutor.resume({ex.batch_id})" in caplog.text


def test_import_and_local_run_without_mysqlclient(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['MySQLdb'] = None  # any import of it now fails\n"
        "import boinc_executor, boinc_executor.volunteer.runner\n"
        "from boinc_executor import BoincExecutor\n"
        "def f(x): return x + 1\n"
        "if __name__ == '__main__':\n"
        f"    with BoincExecutor(max_workers=1, batch_dir={str(tmp_path / 'b')!r}) as ex:\n"
        "        assert list(ex.map(f, range(3))) == [1, 2, 3]\n"
        "    assert sys.modules['MySQLdb'] is None\n"
        "    print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_exit_without_shutdown_finishes_the_work(tmp_path: Path) -> None:
    """Like ProcessPoolExecutor: a script that never shuts down still runs its jobs at exit."""
    batch = tmp_path / "b"
    script = (
        "from boinc_executor import BoincExecutor\n"
        "def f(x): return x * 2\n"
        "if __name__ == '__main__':\n"
        f"    ex = BoincExecutor(max_workers=1, batch_dir={str(batch)!r})\n"
        "    for i in range(5):\n"
        "        ex.submit(f, i)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    handled = [protocol.parse_record_name(r.name) for r in handled_records(batch).values()]
    assert sorted(job for job, _ in handled) == sorted(
        f"pyb_{_batch_id(batch)}_{j}" for j in range(5)
    )
    assert list((batch / "new").iterdir()) == []


def _batch_id(batch: Path) -> int:
    import json

    return int(json.loads((batch / "pyboinc_checkpoint").read_text())["batch_id"])


def test_flush_returns_once_every_call_is_journaled(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        futures = [ex.submit(jobs.square, i) for i in range(20)]
        assert ex.flush(timeout=60)
        assert (tmp_path / "b" / "journal.jsonl").read_text().count("\n") == 20
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(20)]


def test_progress_counts_calls_on_the_embedded_backend(tmp_path: Path) -> None:
    from boinc_executor.progress import Progress

    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        futures = [ex.submit(jobs.square, i) for i in range(3)]
        failing = ex.submit(jobs.raise_value_error, "no")
        assert ex.flush(timeout=60)
        assert ex.progress().total == 4
        for fut in futures:
            fut.result(timeout=60)
        with pytest.raises(ValueError):
            failing.result(timeout=60)
        assert ex.progress() == Progress(
            total=4, queued=0, running=0, done=3, failed=1, cancelled=0
        )


def test_a_full_submission_buffer_makes_submit_wait_but_never_a_callback(
    tmp_path: Path,
) -> None:
    """A submit loop waits for the hand-over once the buffer is full (so memory stays
    bounded); a done-callback that submits runs on the collector's own threads and must
    not wait for them. Every future still resolves, in order."""
    gate = tmp_path / "gate"
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        ex._collector._buffer_jobs = 4  # the bound, small enough that the loop waits
        blocker = ex.submit(jobs.wait_for_file, str(gate), "first")
        chained: list[Future[int]] = []
        blocker.add_done_callback(
            lambda _f: chained.extend(ex.submit(jobs.square, i) for i in range(20))
        )
        waiting = [ex.submit(jobs.square, i) for i in range(50)]
        gate.touch()
        assert [f.result(timeout=60) for f in waiting] == [i * i for i in range(50)]
        assert blocker.result(timeout=60) == "first"
    assert [f.result(timeout=0) for f in chained] == [i * i for i in range(20)]


def test_a_record_announced_to_an_idle_decoder_is_handled_on_the_announcing_thread(
    tmp_path: Path,
) -> None:
    """Latency: a worker's record reaches an idle decoder without a thread hop; the
    thread that read the worker's report decodes it, packs it and resolves the future.
    Invariants: every result is right and packed, and the batch replays them."""
    threads: list[str] = []
    batch = tmp_path / "b"
    with BoincExecutor(max_workers=1, batch_dir=batch) as ex:
        for i in range(20):  # one at a time: the decoder is idle whenever a record comes
            fut = ex.submit(jobs.square, i)
            fut.add_done_callback(lambda _f: threads.append(threading.current_thread().name))
            assert fut.result(timeout=60) == i * i
    # (A job resolved before its callback was added runs it on this thread.)
    assert "boinc-executor-worker" in threads, threads
    assert len(handled_records(batch)) == 20
    with BoincExecutor(max_workers=1, batch_dir=batch) as ex:
        assert [ex.submit(jobs.square, i).result(timeout=60) for i in range(20)] == [
            i * i for i in range(20)
        ]


def test_a_job_submitted_to_idle_workers_is_handed_over_before_submit_returns(
    tmp_path: Path,
) -> None:
    """Latency: with every worker idle, submit journals and hands the job over itself
    (no wait for the collector thread); while workers are busy, jobs are buffered for
    the collector's bulk hand-over, and all still resolve, in order."""
    journal = tmp_path / "b" / "journal.jsonl"
    gate = tmp_path / "gate"
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        for i in range(3):
            fut = ex.submit(jobs.square, i)
            assert journal.read_text().count("\n") == i + 1  # journaled on this thread
            assert fut.result(timeout=60) == i * i
        blocker = ex.submit(jobs.wait_for_file, str(gate), "held")
        queued = [ex.submit(jobs.square, i) for i in range(10)]
        gate.touch()
        assert [f.result(timeout=60) for f in queued] == [i * i for i in range(10)]
        assert blocker.result(timeout=60) == "held"
