"""The BOINC backend against the stand-in project: configuration errors, staging,
bulk create_work, job parameters, failures and error masks, cancellation, a master
killed in the middle of create_work, and resume from another directory.

Everything runs on the real MariaDB with the harness's create_work, daemons and
client; the volunteer runs our app version (launcher -> pyboinc.zip -> runner).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor, JobParams, protocol
from boinc_executor.backends.base import BackendEvents
from boinc_executor.backends.boinc import BoincBackend
from boinc_executor.batch import BatchDir, Checkpoint, JournalEntry
from boinc_executor.errors import ConfigError, DatabaseError, WorkunitError
from boinc_executor.progress import Progress as CallCounts
from tests import jobs
from tests.boinc_harness.common import fanout_dir, read_config
from tests.boinc_harness.project import Project
from tests.boinc_harness.server import Server, transitioner_pass
from tests.boinc_harness.volunteer import VolunteerHost

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]

# A master that submits N calls, one per job, then waits to be killed. It runs on one
# CPU, so its create_work runs are one process at a time.
SUBMITTER = """\
import os, sys, time
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
from boinc_executor import BoincExecutor
from tests import jobs
n = int(sys.argv[3])
ex = BoincExecutor(project_dir=sys.argv[1], batch_dir=sys.argv[2])
print(ex.batch_id, flush=True)
results = ex.map(jobs.square, range(n), chunksize=1)
time.sleep(600)
"""


@pytest.fixture(autouse=True)
def _volunteer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The volunteer's Python finds tests.jobs; the backend polls the database often.
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")


@pytest.fixture
def host(pyboinc_project: Project, tmp_path: Path) -> VolunteerHost:
    """A two-CPU volunteer with an empty work buffer."""
    return VolunteerHost(
        pyboinc_project, client_dir=tmp_path / "client", ncpus=2, max_tasks_per_rpc=2
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def count_wus(project: Project, batch_id: int) -> int:
    return int(project.query("select count(*) as n from workunit where batch=%s", batch_id)[0]["n"])


def edit_config(project: Project, pattern: str, replacement: str) -> None:
    text = project.config_path.read_text()
    new, n = re.subn(pattern, replacement, text, count=1)
    assert n == 1, pattern
    project.config_path.write_text(new)


# --------------------------------------------------------------------------- configuration


def test_not_a_project_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.xml"):
        BoincBackend(tmp_path)
    with pytest.raises(ConfigError, match=r"no config\.xml"):
        BoincExecutor(project_dir=tmp_path)


def test_project_without_setup_says_to_run_setup_project(boinc_project: Project) -> None:
    with pytest.raises(ConfigError, match="setup-project"):
        BoincBackend(boinc_project.root)


def test_missing_app_or_batch_table_says_to_run_setup_project(pyboinc_project: Project) -> None:
    BoincBackend(pyboinc_project.root).close(complete=False)
    conn = pyboinc_project.connect()
    try:
        conn.cursor().execute("update app set name='renamed' where name='pyboinc'")
        with pytest.raises(ConfigError, match=r"no app 'pyboinc'.*setup-project"):
            BoincBackend(pyboinc_project.root)
        conn.cursor().execute("update app set name='pyboinc' where name='renamed'")
        conn.cursor().execute("drop table pyboinc_batch")
        with pytest.raises(ConfigError, match=r"no pyboinc_batch table.*setup-project"):
            BoincBackend(pyboinc_project.root)
    finally:
        conn.close()


def test_wrong_credentials_and_unreachable_database(pyboinc_project: Project) -> None:
    original = pyboinc_project.config_path.read_text()
    edit_config(pyboinc_project, r"<db_user>[^<]*</db_user>", "<db_user>nobody_here</db_user>")
    with pytest.raises(ConfigError, match="refused the credentials"):
        BoincBackend(pyboinc_project.root)
    pyboinc_project.config_path.write_text(original)
    edit_config(pyboinc_project, r"<db_host>[^<]*</db_host>", "<db_host>127.0.0.1:9</db_host>")
    edit_config(pyboinc_project, r"\s*<db_port>[^<]*</db_port>|(?=</config>)", "")
    with pytest.raises(DatabaseError, match="cannot reach"):
        BoincBackend(pyboinc_project.root)


def test_database_connection_killed_by_the_server_is_reopened(pyboinc_project: Project) -> None:
    from boinc_executor.backends.db import Database
    from boinc_executor.config import ProjectConfig

    db = Database(ProjectConfig.load(pyboinc_project.root))

    def kill() -> None:  # as MariaDB does to a connection idle past wait_timeout
        (conn_id,) = db.query("select connection_id()")[0]
        admin = pyboinc_project.connect()
        admin.cursor().execute(f"kill {int(conn_id)}")
        admin.close()

    try:
        for _ in range(2):
            kill()
            assert db.app_id("pyboinc") is not None
        kill()
        with db.transaction():
            db.execute("update batch set name=name where id=0")
    finally:
        db.close()


def test_submitting_user(pyboinc_project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = BoincBackend(pyboinc_project.root)
    assert backend.user_id == 1  # make_project's administrator
    backend.close(complete=False)
    monkeypatch.setenv("BOINC_EXECUTOR_USER_ID", "0")
    backend = BoincBackend(pyboinc_project.root)
    assert backend.user_id == 0
    backend.close(complete=False)
    for bad, message in (("abc", "not a BOINC user ID"), ("999", "does not exist")):
        monkeypatch.setenv("BOINC_EXECUTOR_USER_ID", bad)
        with pytest.raises(ConfigError, match=message):
            BoincBackend(pyboinc_project.root)


# --------------------------------------------------------------------------- staging


def test_staging_uses_boincs_fanout_and_immutable_names(pyboinc_project: Project) -> None:
    backend = BoincBackend(pyboinc_project.root)

    def staged(name: str, data: bytes, *, shared: bool) -> Path:
        backend.stage(name, data, shared=shared)
        backend.submit([], JobParams())  # waits for the staging threads
        return pyboinc_project.download_dir / fanout_dir(name, 1024) / name

    try:
        program = "pyb_fn_0123456789abcdef0123456789abcdef.pkl"
        path = staged(program, b"program", shared=True)
        assert path.read_bytes() == b"program"
        assert path.parent == read_config(pyboinc_project.root).download_path(program).parent
        assert staged(program, b"other", shared=True).read_bytes() == b"program"  # immutable
        data = "pyb_7_3.pkl"
        path = staged(data, b"first", shared=False)
        # A data file re-staged with other bytes (a run killed before journaling it) is
        # replaced, and so is create_work's md5 cache beside it.
        assert staged(data, b"second", shared=False).read_bytes() == b"second"
        md5 = hashlib.md5(b"second").hexdigest()
        assert path.with_name(data + ".md5").read_text() == f"{md5} {6.0:.15e}\n"
    finally:
        backend.close(complete=False)


def test_journaled_job_without_its_input_fails_alone(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    backend = BoincBackend(pyboinc_project.root)
    try:
        batch_id, path = backend.create_batch("lost", tmp_path / "batch")
        batch = BatchDir(path)
        backend.attach(batch, Checkpoint(batch_id, "boinc"), BackendEvents(print, print, print))
        program = protocol.encode_program(jobs.square)
        program_name = protocol.program_file_name("pyb", program)
        backend.stage(program_name, program, shared=True)
        entries = []
        for i in range(3):
            job = protocol.job_name("pyb", batch_id, i)
            data_name = protocol.data_file_name(job)
            if i != 1:  # job 1 was journaled, then its master died before the write
                backend.stage(data_name, protocol.encode_data(job, [((i,), {})]), shared=False)
            entries.append(JournalEntry(job, i, i, 1, "digest", program_name, data_name))
        backend.submit(entries, JobParams())
        names = {w["name"] for w in pyboinc_project.query("select name from workunit")}
        assert names == {f"pyb_{batch_id}_0", f"pyb_{batch_id}_2"}
        record = batch.new_dir / f"pyb_{batch_id}_1.lost.result"
        header, _ = protocol.decode_frame(record.read_bytes(), "result")
        assert header["error"]["type"] == "JobLostError"
        assert "never staged" in header["error"]["message"]
        batch.close()
    finally:
        backend.close(complete=False)


# --------------------------------------------------------------------------- work units


def test_chunked_map_in_one_create_work_with_job_params(
    pyboinc_project: Project, host: VolunteerHost
) -> None:
    root = pyboinc_project.root
    real = root / "bin" / "create_work.real"
    (root / "bin" / "create_work").rename(real)
    log = root / "create_work.calls"
    wrapper = root / "bin" / "create_work"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    params = JobParams(
        rsc_fpops_est=2e9,
        rsc_fpops_bound=4e12,
        rsc_memory_bound=3e8,
        rsc_disk_bound=2e8,
        delay_bound=3600,
        priority=3,
        max_error_results=2,
        max_total_results=3,
        max_success_results=1,
    )
    with host.running():
        ex = BoincExecutor(project_dir=root, job_params=params, name="chunky")
        batch_id = ex.batch_id
        assert list(ex.map(jobs.square, range(23), chunksize=5)) == [x * x for x in range(23)]
        assert ex.progress() == CallCounts(
            total=23, queued=0, running=0, done=23, failed=0, cancelled=0
        )
        ex.shutdown()
    calls = log.read_text().splitlines()
    assert len(calls) == 1, calls  # five work units, one create_work process
    assert f"--appname pyboinc --batch {batch_id} " in calls[0] and calls[0].endswith("--stdin")
    wus = pyboinc_project.query("select * from workunit where batch=%s order by id", batch_id)
    assert [w["name"] for w in wus] == [f"pyb_{batch_id}_{i}" for i in range(5)]
    app_id = pyboinc_project.query("select id from app where name='pyboinc'")[0]["id"]
    for wu in wus:
        assert wu["appid"] == app_id
        assert wu["result_template_file"] == "templates/pyboinc_out"
        assert (wu["rsc_fpops_est"], wu["rsc_fpops_bound"]) == (2e9, 4e12)
        assert (wu["rsc_memory_bound"], wu["rsc_disk_bound"]) == (3e8, 2e8)
        assert (wu["delay_bound"], wu["priority"]) == (3600, 3)
        assert (wu["min_quorum"], wu["target_nresults"]) == (1, 1)
        assert (wu["max_error_results"], wu["max_total_results"]) == (2, 3)
        assert wu["max_success_results"] == 1
        program_info, data_info = wu["xml_doc"].split("</file_info>")[:2]
        assert "<no_delete/>" in program_info and "<no_delete/>" not in data_info
        assert f"<name>{wu['name']}.pkl</name>" in data_info
    docs = "".join(w["xml_doc"] for w in wus)
    programs = set(re.findall(r"<name>(pyb_fn_\w+\.pkl)</name>", docs))
    assert len(programs) == 1  # one shared program file
    (program,) = programs
    assert pyboinc_project.download_path(program).exists()  # <no_delete/> kept it
    (batch,) = pyboinc_project.query("select * from batch where id=%s", batch_id)
    assert (batch["name"], batch["app_id"], batch["user_id"]) == ("chunky", app_id, 1)
    assert (batch["state"], batch["njobs"], batch["nerror_jobs"]) == (2, 5, 0)
    assert batch["completion_time"] > 0 and batch["fraction_done"] == 1.0
    (record,) = pyboinc_project.query("select * from pyboinc_batch where batch_id=%s", batch_id)
    assert record["batch_dir"] == str(root / "pyboinc_batches" / str(batch_id))


def test_job_failing_once_on_the_volunteer_is_retried(
    pyboinc_project: Project, host: VolunteerHost
) -> None:
    host.fail_next(1, exit_code=3)
    with host.running(), BoincExecutor(project_dir=pyboinc_project.root) as ex:
        assert ex.submit(jobs.add, 1, 2).result(timeout=60) == 3
        name = f"pyb_{ex.batch_id}_0"
    results = pyboinc_project.results(name)
    assert [(r["outcome"], r["exit_status"]) for r in results] == [(3, 3), (1, 0)]


def test_exhausted_retries_raise_workunit_error_without_an_assimilator(
    pyboinc_project: Project, host: VolunteerHost
) -> None:
    # Only the backend can resolve the future: the assimilator daemon is off.
    edit_config(
        pyboinc_project,
        r"(<cmd>script_assimilator[^<]*</cmd>)",
        r"\1\n            <disabled>1</disabled>",
    )
    params = JobParams(max_error_results=1, max_total_results=2, max_success_results=1)
    host.fail_next(2, exit_code=7)
    with host.running():
        ex = BoincExecutor(project_dir=pyboinc_project.root, job_params=params)
        future = ex.submit(jobs.square, 4)
        with pytest.raises(WorkunitError) as info:
            future.result(timeout=60)
        progress = ex.progress()
        ex.shutdown()
    error = info.value
    assert error.error_mask & 2 and error.error_mask & 8
    assert error.exit_status == 7
    assert "process exited with code 7" in error.stderr_tail
    assert "too many results failed" in str(error)
    assert progress == CallCounts(
        total=1, queued=0, running=0, done=0, failed=1, cancelled=0
    )
    wu = pyboinc_project.workunit(f"pyb_{ex.batch_id}_0")
    assert wu is not None and wu["assimilate_state"] == 1  # nobody assimilated it
    (batch,) = pyboinc_project.query("select * from batch where id=%s", ex.batch_id)
    assert (batch["state"], batch["nerror_jobs"]) == (2, 1)


def test_cancel_unsent_jobs_like_cancel_jobs(pyboinc_project: Project, host: VolunteerHost) -> None:
    config = read_config(pyboinc_project.root)
    ex = BoincExecutor(project_dir=pyboinc_project.root)
    futures = [ex.submit(jobs.square, i) for i in range(4)]
    wait_for(lambda: count_wus(pyboinc_project, ex.batch_id) == 4)
    srv = Server(config=config, conn=config.connect())
    try:
        transitioner_pass(srv)  # results exist, none sent
    finally:
        srv.conn.close()
    assert futures[0].cancel()
    name = f"pyb_{ex.batch_id}_0"
    wait_for(lambda: (pyboinc_project.workunit(name) or {}).get("error_mask", 0) & 16)
    wu = pyboinc_project.workunit(name)
    assert wu is not None and abs(wu["transition_time"] - time.time()) < 60
    (result,) = pyboinc_project.results(name)
    assert (result["server_state"], result["outcome"]) == (5, 5)  # OVER, DIDNT_NEED
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    masks = [
        w["error_mask"]
        for w in pyboinc_project.query(
            "select error_mask from workunit where batch=%s", ex.batch_id
        )
    ]
    assert masks == [16, 16, 16, 16]
    # The assimilator reports the cancelled work units; their records are set aside unread.
    host.run_until(
        lambda: all(
            w["assimilate_state"] == 2
            for w in pyboinc_project.query(
                "select assimilate_state from workunit where batch=%s", ex.batch_id
            )
        )
    )
    assert not [r for r in pyboinc_project.results(name) if r["sent_time"]]


def test_job_cancelled_by_the_operator_fails_with_workunit_error(
    pyboinc_project: Project,
) -> None:
    with BoincExecutor(project_dir=pyboinc_project.root) as ex:
        future = ex.submit(jobs.square, 5)
        wait_for(lambda: count_wus(pyboinc_project, ex.batch_id) == 1)
        wu = pyboinc_project.workunit(f"pyb_{ex.batch_id}_0")
        assert wu is not None
        done = pyboinc_project.run("cancel_jobs", str(wu["id"]), str(wu["id"]))
        assert done.returncode == 0, done.stderr
        with pytest.raises(WorkunitError, match="cancelled outside this executor") as info:
            future.result(timeout=60)
        assert info.value.error_mask == 16 and info.value.exit_status is None


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("kill_group", [True, False], ids=["with-create_work", "master-only"])
def test_kill_during_bulk_create_work_then_rerun(
    pyboinc_project: Project, tmp_path: Path, kill_group: bool
) -> None:
    n = 2500  # one create_work process, three multi-row INSERTs
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    batch_dir = tmp_path / "batch"
    argv = [sys.executable, str(script), str(pyboinc_project.root), str(batch_dir), str(n)]
    slow = dict(os.environ, BOINC_HARNESS_CREATE_WORK_DELAY="1")
    first = subprocess.Popen(argv, env=slow, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert first.stdout is not None
        batch_id = int(first.stdout.readline())
        wait_for(lambda: count_wus(pyboinc_project, batch_id) > 0)
        if kill_group:
            os.killpg(first.pid, signal.SIGKILL)  # the master and its create_work
        else:
            os.kill(first.pid, signal.SIGKILL)  # create_work carries on as an orphan
        first.wait()
        partial = count_wus(pyboinc_project, batch_id)
        if kill_group:
            assert 0 < partial < n
        second = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: count_wus(pyboinc_project, batch_id) >= n)
            time.sleep(0.5)  # nothing more may arrive
        finally:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert first.stdout is not None
        first.stdout.close()
    names = [
        r["name"]
        for r in pyboinc_project.query("select name from workunit where batch=%s", batch_id)
    ]
    assert len(names) == n
    assert set(names) == {f"pyb_{batch_id}_{i}" for i in range(n)}


def test_resume_from_another_directory(
    pyboinc_project: Project,
    host: VolunteerHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    root = str(pyboinc_project.root)
    first = subprocess.Popen(
        [sys.executable, str(script), root, str(tmp_path / "batch"), "6"],
        stdout=subprocess.PIPE,
    )
    try:
        assert first.stdout is not None
        batch_id = int(first.stdout.readline())
        wait_for(lambda: count_wus(pyboinc_project, batch_id) == 6)
    finally:
        first.kill()
        first.wait()
        assert first.stdout is not None
        first.stdout.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("PYBOINC_DIR", root)
    with host.running(), BoincExecutor.resume(batch_id) as ex:
        assert ex.batch_dir == tmp_path / "batch"
        assert list(ex.results(timeout=60)) == [x * x for x in range(6)]
    assert count_wus(pyboinc_project, batch_id) == 6  # nothing created twice
