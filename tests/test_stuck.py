"""Stuck batches explain themselves: a daemon that does not run is named, with the check.

The harness's bin/start runs real daemon processes; killing one is what a crashed or
lock-starved daemon looks like to the database. The executor must log one warning
naming that daemon and the commands that check it, ``progress().stuck`` and
``boinc-executor status`` must say the same, and the batch must finish once the daemon
is back. Likewise when no app version may be sent, so the results are never sent.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor
from tests import jobs
from tests.boinc_harness.project import Project
from tests.boinc_harness.start_stop import lock_held, lock_owner
from tests.boinc_harness.volunteer import VolunteerHost

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")
    # Seconds, not the real minimum of 60: the harness steps all daemons in one thread,
    # and a step that runs the client's tasks can hold the transitioner for a second or two.
    monkeypatch.setenv("BOINC_EXECUTOR_STUCK_AFTER", "3")


def kill_daemon(project: Project, lock: str) -> None:
    owner = lock_owner(project.pid_dir / lock)
    assert owner is not None, lock
    os.kill(owner[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while lock_held(project.pid_dir / lock):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)


def stuck_warnings(caplog: pytest.LogCaptureFixture, daemon: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "is stuck" in r.getMessage()
            and f"the {daemon}" in r.getMessage()]


@pytest.mark.parametrize(("lock", "daemon", "what"), [
    ("pyboinc_validator.log.lock", "validator", "were reported but not validated"),
    ("pyboinc_assimilator.log.lock", "assimilator", "validated (or failed) but not assimilated"),
])
def test_a_daemon_that_does_not_run_is_named_and_the_batch_finishes_once_it_is_back(
    pyboinc_project: Project, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    lock: str, daemon: str, what: str,
) -> None:
    project = pyboinc_project
    assert project.run("start").returncode == 0
    kill_daemon(project, lock)
    host = VolunteerHost(project, client_dir=tmp_path / "client")
    caplog.set_level(logging.WARNING, logger="boinc_executor")
    with host.running(), BoincExecutor(project_dir=project.root) as ex:
        futures = [ex.submit(jobs.square, i) for i in range(3)]
        wait_for(lambda: stuck_warnings(caplog, daemon))
        wait_for(lambda: daemon in (ex.progress().stuck or ""))  # type: ignore[union-attr]
        progress = ex.progress()
        assert progress is not None and progress.stuck is not None
        for text in (progress.stuck, stuck_warnings(caplog, daemon)[0]):
            assert what in text and f"the {daemon} (`" in text
            assert f"boinc-executor doctor {project.root}" in text and "bin/status -v" in text
        assert not any(f.done() for f in futures)

        status = subprocess.run(
            [sys.executable, "-m", "boinc_executor.cli", "status", str(ex.batch_id),
             "--project", str(project.root)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
        assert status.returncode == 0, status.stderr
        assert "STUCK:" in status.stdout and what in status.stdout

        assert project.run("start").returncode == 0  # the daemon is back
        assert [f.result(timeout=60) for f in futures] == [0, 1, 4]
        wait_for(lambda: ex.progress().stuck is None)  # type: ignore[union-attr]
    assert len(stuck_warnings(caplog, daemon)) == 1, "one warning, not one per poll"


def test_work_no_app_version_can_carry_is_named_and_finishes_once_one_is_live(
    pyboinc_project: Project, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Every app version deprecated: the scheduler sends nothing and no daemon is at
    fault, but the database says why, and the executor repeats it."""
    project = pyboinc_project
    assert project.run("start").returncode == 0
    conn = project.connect()
    try:
        conn.cursor().execute("update app_version v join app a on a.id=v.appid "
                              "set v.deprecated=1 where a.name='pyboinc'")
        host = VolunteerHost(project, client_dir=tmp_path / "client")
        caplog.set_level(logging.WARNING, logger="boinc_executor")
        with host.running(), BoincExecutor(project_dir=project.root) as ex:
            futures = [ex.submit(jobs.square, i) for i in range(2)]
            wait_for(lambda: stuck_warnings(caplog, "app pyboinc"))
            (warning,) = stuck_warnings(caplog, "app pyboinc")
            assert "2 work unit(s) were never sent" in warning
            assert "has no app version the scheduler may send" in warning
            assert f"boinc-executor doctor {project.root}" in warning
            wait_for(lambda: "never sent" in (ex.progress().stuck or ""))  # type: ignore[union-attr]
            assert not any(f.done() for f in futures)

            conn.cursor().execute("update app_version v join app a on a.id=v.appid "
                                  "set v.deprecated=0 where a.name='pyboinc'")
            assert [f.result(timeout=60) for f in futures] == [0, 1]
            wait_for(lambda: ex.progress().stuck is None)  # type: ignore[union-attr]
    finally:
        conn.close()
    assert len(stuck_warnings(caplog)) == 1


def test_a_moving_batch_is_not_stuck(
    pyboinc_project: Project, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOINC_EXECUTOR_STUCK_AFTER", "20")
    project = pyboinc_project
    assert project.run("start").returncode == 0
    host = VolunteerHost(project, client_dir=tmp_path / "client")
    caplog.set_level(logging.WARNING, logger="boinc_executor")
    with host.running(), BoincExecutor(project_dir=project.root) as ex:
        assert list(ex.map(jobs.square, range(4), chunksize=1, timeout=60)) == [0, 1, 4, 9]
        progress = ex.progress()
        assert progress is not None and progress.stuck is None
    assert stuck_warnings(caplog) == []
