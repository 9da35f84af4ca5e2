"""On a BOINC project, ^C keeps the batch and its work units; the re-run creates none.

The master runs as ``python script.py`` with ``PYBOINC_DIR`` set and no batch_dir;
the harness volunteer keeps working while the master is gone, as a real one would.
Failed calls are retried as new work units.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import wait
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor, protocol
from boinc_executor.backends.boinc import BoincBackend
from tests import jobs
from tests.boinc_harness.common import DIDNT_NEED, WU_CANCELLED
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]
N = 30

SCRIPT = """
import json, sys
from boinc_executor import BoincExecutor, protocol
from boinc_executor.backends.boinc import BoincBackend
from tests import jobs

log, out = sys.argv[1:3]
if __name__ == "__main__":
    with BoincExecutor() as ex:
        print("BATCH", ex.batch_id, ex.batch_dir, flush=True)
        results = list(ex.map(jobs.log_and_square, [log] * 30, range(30), [0.1] * 30, chunksize=1))
    with open(out, "w") as fh:
        json.dump(results, fh)
"""


LOOP_SCRIPT = """
import sys
from boinc_executor import BoincExecutor, protocol
from boinc_executor.backends.boinc import BoincBackend
from tests import jobs

log, how = sys.argv[1:3]
if __name__ == "__main__":
    with BoincExecutor() as ex:
        print("BATCH", ex.batch_id, ex.batch_dir, flush=True)
        calls = ex.map(jobs.log_and_square, [log] * 30, range(30), [0.1] * 30, chunksize=1)
        for n, _ in enumerate(calls):
            if n == 3 and how == "exit":
                sys.exit(3)
"""

#: the master's scripts run this checkout's code even where another copy is installed
MASTER_PATH = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])


@pytest.fixture(autouse=True)
def _volunteer_env(monkeypatch: pytest.MonkeyPatch, pyboinc_project: Project) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")
    monkeypatch.setenv("PYBOINC_DIR", str(pyboinc_project.root))


def _count(project: Project, batch_id: int, where: str = "1") -> int:
    rows = project.query(f"select count(*) as n from workunit where batch=%s and {where}", batch_id)
    return int(rows[0]["n"])


def _cancel_traces(project: Project, batch_id: int) -> int:
    """Work units cancelled (error_mask 16) plus results made DIDNT_NEED, as cancel_jobs does."""
    rows = project.query(
        "select count(*) as n from result r join workunit w on r.workunitid = w.id "
        "where w.batch=%s and r.outcome=%s",
        batch_id,
        DIDNT_NEED,
    )
    return _count(project, batch_id, f"error_mask & {WU_CANCELLED}") + int(rows[0]["n"])


def _runs(log: Path) -> Counter[int]:
    return Counter(int(x) for x in log.read_text().split()) if log.exists() else Counter()


def _wait_for(predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


def test_ctrl_c_keeps_work_units_and_rerun_creates_none(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    script = tmp_path / "master.py"
    script.write_text(SCRIPT)
    log, out = tmp_path / "log", tmp_path / "out.json"
    argv = [sys.executable, str(script), str(log), str(out)]
    env = dict(os.environ, PYTHONPATH=MASTER_PATH)
    host = VolunteerHost(
        pyboinc_project, client_dir=tmp_path / "client", ncpus=2, max_tasks_per_rpc=2
    )
    with host.running():
        first = subprocess.Popen(
            argv,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        try:
            assert first.stdout is not None
            match = re.match(r"BATCH (\d+) (\S+)", first.stdout.readline())
            assert match, first.communicate()
            batch_id = int(match.group(1))
            _wait_for(lambda: _count(pyboinc_project, batch_id) == N and len(_runs(log)) >= 3)
            os.killpg(first.pid, signal.SIGINT)
            _, stderr = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
        assert f"batch {batch_id} is kept in {match.group(2)}; run the script again" in stderr
        assert not out.exists(), "the interrupt came after the map finished"
        assert Path(match.group(2)).is_dir()

        second = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
        assert second.returncode == 0, second.stderr
        assert f"BATCH {batch_id} " in second.stdout, "the re-run did not replay the batch"
    assert json.loads(out.read_text()) == [x * x for x in range(N)]
    assert _count(pyboinc_project, batch_id) == N, "the re-run created work units"
    assert _cancel_traces(pyboinc_project, batch_id) == 0, "work units were cancelled"
    runs = _runs(log)
    assert set(runs) == set(range(N))
    assert all(n == 1 for n in runs.values()), {x: n for x, n in runs.items() if n > 1}


def test_retry_failed_creates_new_work_units_only_for_failures(
    pyboinc_project: Project,
    boinc_executor_factory: Callable[..., BoincExecutor],
    tmp_path: Path,
) -> None:
    marker, log = tmp_path / "ready", tmp_path / "log"
    with boinc_executor_factory(max_workers=2, batch_dir=tmp_path / "batch") as ex:
        futures = [ex.submit(jobs.flaky, str(marker), str(log), x) for x in range(6)]
        wait(futures, timeout=120)
        batch_id = ex.batch_id
    assert [x for x, f in enumerate(futures) if f.exception() is not None] == [0, 3]
    marker.touch()
    # BOINC's file_deleter has removed the finished work units' inputs, so the calls are
    # sent again from the re-run script; every other result is replayed.
    with boinc_executor_factory(
        max_workers=2, batch_dir=tmp_path / "batch", retry_failed=True
    ) as ex:
        futures = [ex.submit(jobs.flaky, str(marker), str(log), x) for x in range(6)]
        assert [f.result(timeout=120) for f in futures] == [x * 10 for x in range(6)]
    names = {
        r["name"]
        for r in pyboinc_project.query("select name from workunit where batch=%s", batch_id)
    }
    assert names == {f"pyb_{batch_id}_{i}" for i in range(6)} | {
        f"pybr1_{batch_id}_0",
        f"pybr1_{batch_id}_3",
    }
    assert _runs(log) == Counter({0: 2, 3: 2, 1: 1, 2: 1, 4: 1, 5: 1})


def test_sys_exit_in_a_map_loop_cancels_no_work_unit(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    """The exit closes the map iterator, which cancels, before ``__exit__`` sees it: the
    cancels are held back (``cancel_delay``) and dropped when the exit keeps the batch."""
    script = tmp_path / "loop.py"
    script.write_text(LOOP_SCRIPT)
    log = tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=MASTER_PATH)
    host = VolunteerHost(
        pyboinc_project, client_dir=tmp_path / "client", ncpus=2, max_tasks_per_rpc=2
    )
    with host.running():
        first = subprocess.run(
            [sys.executable, str(script), str(log), "exit"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        assert first.returncode == 3, first.stderr
        match = re.search(r"batch (\d+) is kept in (\S+); run the script again", first.stderr)
        assert match, first.stderr
        batch_id = int(match.group(1))
        assert _count(pyboinc_project, batch_id) == N
        time.sleep(3)  # past cancel_delay: a cancel that was sent has reached the database
        assert _cancel_traces(pyboinc_project, batch_id) == 0, "work units were cancelled"
        second = subprocess.run(
            [sys.executable, str(script), str(log), "through"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        assert second.returncode == 0, second.stderr
        assert f"BATCH {batch_id} " in second.stdout, "the re-run did not replay the batch"
    assert _count(pyboinc_project, batch_id) == N, "the re-run created work units"
    assert _cancel_traces(pyboinc_project, batch_id) == 0
    runs = _runs(log)
    assert set(runs) == set(range(N))
    assert all(n == 1 for n in runs.values()), {x: n for x, n in runs.items() if n > 1}


def test_cancels_wait_for_the_delay_and_an_exit_drops_them(
    pyboinc_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BoincBackend, "cancel_delay", 30.0)

    def cancelled(batch_id: int) -> int:
        return _count(pyboinc_project, batch_id, "error_mask & 16")

    # A normal shutdown sends the held cancels at once (explicit cancels keep PPE's meaning).
    ex = BoincExecutor(project_dir=pyboinc_project.root, batch_dir=tmp_path / "a")
    futures = [ex.submit(jobs.square, i) for i in range(3)]
    assert ex.flush(timeout=60)
    _wait_for(lambda: _count(pyboinc_project, ex.batch_id) == 3)
    assert futures[0].cancel()
    time.sleep(1.0)
    assert cancelled(ex.batch_id) == 0, "the cancel did not wait for cancel_delay"
    started = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 20
    assert cancelled(ex.batch_id) == 3

    # An exit right after a cancel is taken for the interrupt that caused it: nothing is
    # sent. KeyboardInterrupt raised by a SIGINT handler of the user's own, which the
    # executor does not replace, reaches it the same way.
    for exit_with in (SystemExit(2), KeyboardInterrupt()):
        kind = type(exit_with).__name__
        with pytest.raises(type(exit_with)):
            with BoincExecutor(project_dir=pyboinc_project.root, batch_dir=tmp_path / kind) as ex:
                futures = [ex.submit(jobs.square, i) for i in range(3)]
                assert ex.flush(timeout=60)
                _wait_for(lambda: _count(pyboinc_project, ex.batch_id) == 3)
                assert futures[1].cancel()
                raise exit_with
        assert cancelled(ex.batch_id) == 0, kind
        assert (tmp_path / kind / protocol.JOURNAL).is_file()

    # So is an exception the script dies of: a map loop that raised has just cancelled.
    with pytest.raises(ValueError):
        with BoincExecutor(project_dir=pyboinc_project.root, batch_dir=tmp_path / "c") as ex:
            futures = [ex.submit(jobs.square, i) for i in range(3)]
            assert ex.flush(timeout=60)
            _wait_for(lambda: _count(pyboinc_project, ex.batch_id) == 3)
            assert all(f.cancel() for f in futures)
            raise ValueError("the script's own bug")
    assert cancelled(ex.batch_id) == 0
