"""bin/start's lock naming, and a pyboinc batch on a project that already runs other apps.

The harness's bin/start, bin/stop and bin/status model facts §5 and §9 with real
processes and real lockf() locks: two entries with one lock file cannot both run, and
bin/stop does not wait. On such a project, setup-project's entries (own <output> and
<pid_file>) still run, and a batch completes.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor
from boinc_executor.server.project import setup_project
from tests import jobs
from tests.boinc_harness.common import read_config
from tests.boinc_harness.project import Project
from tests.boinc_harness.start_stop import lock_held, lock_owner, running_daemons
from tests.boinc_harness.volunteer import VolunteerHost

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]
OTHER_VALIDATOR = "sample_bitwise_validator -d 3 --app labcheck --sleep_interval 1"
OTHER_ASSIMILATOR = "script_assimilator -d 3 --app labcheck --sleep_interval 1 --script lab"


def running_cmds(project: Project) -> list[str]:
    return [d.cmd for d in running_daemons(read_config(project.root))]


def wait_gone(project: Project, lock: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while lock_held(project.pid_dir / lock):
        assert time.monotonic() < deadline, f"{lock} still locked"
        time.sleep(0.02)


def test_two_entries_with_one_lock_only_the_first_runs(boinc_project: Project) -> None:
    project = boinc_project
    project.add_daemon(OTHER_VALIDATOR)
    project.add_daemon("sample_bitwise_validator -d 3 --app pyboinc --sleep_interval 1")
    before = running_cmds(project)  # never started: as if bin/start had run once
    assert OTHER_VALIDATOR in before and not any("pyboinc" in c for c in before)

    started = project.run("start")
    assert started.returncode == 0
    assert "sample_bitwise_validator already running" in started.stdout
    lock = project.pid_dir / "sample_bitwise_validator.lock"
    owner = lock_owner(lock)
    assert owner is not None and owner[1] == OTHER_VALIDATOR
    assert not any("pyboinc" in c for c in running_cmds(project))
    status = project.run("status", "-v").stdout
    ours = next(line for line in status.splitlines() if "--app pyboinc" in line)
    # The lie of facts §9.1: "running" and "locked", with the other validator's pid.
    assert " running " in ours and " locked " in ours and str(owner[0]) in ours

    # <output> and <pid_file> give the entry its own lock: now both run.
    text = project.config_path.read_text().replace(
        "<cmd>sample_bitwise_validator -d 3 --app pyboinc --sleep_interval 1</cmd>",
        "<cmd>sample_bitwise_validator -d 3 --app pyboinc --sleep_interval 1</cmd>"
        "<output>pyboinc_validator.log</output><pid_file>pyboinc_validator.pid</pid_file>")
    project.config_path.write_text(text)
    assert project.run("start").returncode == 0
    assert lock_held(project.pid_dir / "pyboinc_validator.log.lock")
    assert (project.pid_dir / "pyboinc_validator.pid").is_file()
    assert sum("--app" in c for c in running_cmds(project)) == 2


def test_lock_file_and_output_name_the_files_and_a_second_daemon_exits_at_once(
    boinc_project: Project,
) -> None:
    """<lock_file> overrides the lock, <output> names the log, <pid_file> the pid file; a
    daemon started while its lock is held (by hand, or racing bin/start) exits at once."""
    project = boinc_project
    project.add_daemon(OTHER_VALIDATOR, output="lab.log", pid_file="lab.pid",
                       lock_file="shared.lock")
    project.add_daemon(OTHER_ASSIMILATOR, output="labassim.log", lock_file="shared.lock")
    assert project.run("start").returncode == 0
    owner = lock_owner(project.pid_dir / "shared.lock")
    assert owner is not None and owner[1] == OTHER_VALIDATOR
    assert (project.pid_dir / "lab.pid").read_text().split()[0] == str(owner[0])
    assert "Starting " + OTHER_VALIDATOR in (project.log_dir / "lab.log").read_text()
    assert not (project.pid_dir / "lab.log.lock").exists(), "<lock_file> replaces <output>.lock"
    assert OTHER_ASSIMILATOR not in running_cmds(project), "its <lock_file> is taken"
    assert not (project.pid_dir / "script_assimilator.pid").exists()

    # The daemon itself, started for that entry while the lock is held: gone at once,
    # leaving no pid file, a line in its log, and the first daemon running.
    began = time.monotonic()
    with (project.log_dir / "labassim.log").open("ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "tests.boinc_harness.daemon_proc",
             str(project.pid_dir / "shared.lock"), str(project.pid_dir / "labassim.pid"),
             OTHER_ASSIMILATOR],
            cwd=REPO_ROOT, stdout=log, stderr=log, timeout=30, check=False)
    assert done.returncode == 1 and time.monotonic() - began < 5
    assert not (project.pid_dir / "labassim.pid").exists()
    assert "Another copy of script_assimilator is already running" in (
        project.log_dir / "labassim.log").read_text()
    assert lock_owner(project.pid_dir / "shared.lock") == owner


def test_bin_stop_does_not_wait_so_stop_and_start_race(boinc_project: Project) -> None:
    project = boinc_project
    slow_exit = {**os.environ, "BOINC_HARNESS_EXIT_DELAY": "1.5"}  # daemons in a long pass
    assert project.run("start", env=slow_exit).returncode == 0
    assert sorted(running_cmds(project)) == ["feeder -d 3", "file_deleter -d 3",
                                             "transitioner -d 3"]
    pid = lock_owner(project.pid_dir / "feeder.lock")
    assert pid is not None
    assert project.run("stop").returncode == 0
    assert lock_held(project.pid_dir / "feeder.lock"), "bin/stop returned before the exit"
    assert (project.pid_dir / "feeder.pid").is_file(), "bin/stop leaves the pid files"
    # `bin/stop && bin/start`: start sees the old locks, the old daemons then quit.
    assert project.run("start").returncode == 0
    for lock in ("feeder.lock", "transitioner.lock", "file_deleter.lock"):
        wait_gone(project, lock)
    assert running_cmds(project) == []
    status = project.run("status", "-v").stdout
    assert "UNLOCKED" in status
    # Waiting until the old ones are gone, then starting, works.
    assert project.run("start").returncode == 0
    assert len(running_cmds(project)) == 3


def test_pyboinc_batch_completes_next_to_another_apps_validator_and_assimilator(
    boinc_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = boinc_project
    project.add_daemon(OTHER_VALIDATOR)
    project.add_daemon(OTHER_ASSIMILATOR)
    setup_project(project.root)
    assert project.run("start").returncode == 0
    cmds = running_cmds(project)
    assert OTHER_VALIDATOR in cmds and OTHER_ASSIMILATOR in cmds
    assert sum("--app pyboinc" in c for c in cmds) == 2, cmds

    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")
    host = VolunteerHost(project, client_dir=tmp_path / "client")
    with host.running(), BoincExecutor(project_dir=project.root) as ex:
        assert list(ex.map(jobs.square, range(6), chunksize=2, timeout=60)) == [
            x * x for x in range(6)]


def test_assimilator_exit_ends_its_process_and_bin_start_brings_it_back(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    project = pyboinc_project
    assert project.run("start").returncode == 0
    lock = project.pid_dir / "pyboinc_assimilator.log.lock"
    owner = lock_owner(lock)
    assert owner is not None
    os.kill(owner[0], signal.SIGKILL)  # a crash: nothing restarts it
    wait_gone(project, "pyboinc_assimilator.log.lock")
    assert not any("script_assimilator" in c for c in running_cmds(project))
    host = VolunteerHost(project, client_dir=tmp_path / "client")
    host.restart_daemons()
    assert any("script_assimilator" in c for c in running_cmds(project))


def _holds_pipe(run: list[str], env: dict[str, str]) -> bool:
    """Run ``run`` with a pipe's write end at a descriptor above 2; does anyone keep it?"""
    r, w = os.pipe()
    try:
        done = subprocess.run(run, pass_fds=(w,), env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        os.close(w)
        w = -1
        ready, _, _ = select.select([r], [], [], 2.0)
        return not (ready and os.read(r, 1) == b"")
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_restart_daemons_waits_for_the_old_ones_and_passes_no_descriptors(
    pyboinc_project: Project,
) -> None:
    project = pyboinc_project
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "BOINC_HARNESS_EXIT_DELAY": "1.5"}
    # The harness's bin/start passes inherited descriptors to the daemons (facts §9.4) ...
    assert _holds_pipe([str(project.bin_dir / "start")], env)
    before = {c: lock_owner(project.pid_dir / d.lock_name)
              for c, d in ((d.cmd, d) for d in running_daemons(read_config(project.root)))}
    assert len(before) == 5
    # ... restart-daemons does not, and it waits out the slow exit bin/stop does not wait for.
    cli = [sys.executable, "-m", "boinc_executor.cli", "restart-daemons", str(project.root)]
    assert not _holds_pipe(cli, env)
    after = {d.cmd: lock_owner(project.pid_dir / d.lock_name)
             for d in running_daemons(read_config(project.root))}
    assert after.keys() == before.keys()
    assert all(after[c] != before[c] for c in after), "new processes"
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Every daemon holds its lock." in done.stdout
    assert "boinccmd --project URL update" in done.stdout
