"""The ``boinc-executor`` command line on BOINC batches of the stand-in project.

Batches are made by real executors on the harness project (real MariaDB, the
harness's create_work, daemons and volunteer); the CLI runs as a subprocess. The
missing-mysqlclient cases run it with ``MySQLdb`` made unimportable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor
from boinc_executor.errors import WorkunitError
from tests import jobs
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost
from tests.test_cli import cli, cli_json, env, wait_for

pytestmark = pytest.mark.boinc

SUBMITTER = """\
import sys, time
from boinc_executor import BoincExecutor
from tests import jobs
ex = BoincExecutor(project_dir=sys.argv[1], batch_dir=sys.argv[2], name="orphan")
futures = [ex.submit(jobs.square, i) for i in range(3)]
ex.flush()
print(ex.batch_id, flush=True)
time.sleep(600)
"""


@pytest.fixture(autouse=True)
def _volunteer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")


@pytest.fixture
def host(pyboinc_project: Project, tmp_path: Path) -> VolunteerHost:
    return VolunteerHost(pyboinc_project, client_dir=tmp_path / "client", ncpus=2)


def test_every_reading_command_on_a_boinc_batch(
    pyboinc_project: Project, host: VolunteerHost, tmp_path: Path
) -> None:
    root = str(pyboinc_project.root)
    kept = tmp_path / "kept"
    with host.running(), BoincExecutor(project_dir=root, batch_dir=kept, name="boincfive") as ex:
        futures = [
            ex.submit(jobs.square, 3),
            ex.submit(jobs.raise_value_error, "remote bad"),
            ex.submit(jobs.print_and_return, 5),
        ]
        for fut in futures:
            fut.exception(timeout=60)
        batch_id, path = ex.batch_id, ex.batch_dir
    where = ("--project", root)
    (row,) = [r for r in cli_json("list", *where) if r["backend"] == "boinc"]
    assert (row["id"], row["name"], row["directory"]) == (batch_id, "boincfive", str(path))
    assert row["boinc_state"] == "complete"
    status = cli_json("status", str(batch_id), *where)
    assert status["counts"] == {
        "total": 3,
        "queued": 0,
        "running": 0,
        "done": 2,
        "failed": 1,
        "cancelled": 0,
    }
    assert cli("wait", str(batch_id), *where).returncode == 1
    lines = [json.loads(x) for x in cli("results", str(batch_id), *where).stdout.splitlines()]
    assert [line["status"] for line in lines] == ["done", "failed", "done"]
    assert (lines[0]["value"], lines[2]["value"]) == (9, 5)
    (error,) = cli_json("errors", str(batch_id), "--traceback", *where)
    assert (error["call"], error["type"], error["message"]) == (1, "ValueError", "remote bad")
    assert "Traceback" in error["traceback"]
    assert cli_json("output", str(batch_id), "2", *where)["stdout"] == "hello from 5\n"
    # PYBOINC_DIR selects the project as the executor does.
    done = cli("status", str(batch_id), "--json", extra_env={"PYBOINC_DIR": root})
    assert json.loads(done.stdout)["backend"] == "boinc"
    unknown = cli("status", "999999", *where)
    assert unknown.returncode == 3 and "is not a boinc-executor batch" in unknown.stderr

    # Without mysqlclient: the database cannot be read, and the CLI says so ...
    for argv in (["status", str(batch_id), *where], ["cancel", str(batch_id), "--yes", *where]):
        missing = cli(*argv, block_mysqldb=True)
        assert missing.returncode == 4 and "needs mysqlclient" in missing.stderr, missing.stderr
    # ... but the batch directory alone still answers.
    by_dir = ("--batch-dir", str(path))
    read = cli("results", str(batch_id), *by_dir, block_mysqldb=True)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout.splitlines()[0])["value"] == 9
    status = cli("status", str(batch_id), *by_dir, block_mysqldb=True)
    assert status.returncode == 0 and "only the batch directory was read" in status.stdout


def test_cancel_unsent_work_units_like_cancel_jobs(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    root = str(pyboinc_project.root)
    ex = BoincExecutor(project_dir=root, batch_dir=tmp_path / "kept")
    futures = [ex.submit(jobs.square, i) for i in range(3)]
    assert ex.flush(timeout=60)
    batch_id = ex.batch_id
    assert cli("cancel", str(batch_id), "--project", root).returncode == 1  # not confirmed
    assert (
        pyboinc_project.query("select sum(error_mask) as m from workunit where batch=%s", batch_id)[
            0
        ]["m"]
        == 0
    )
    cancelled = cli_json("cancel", str(batch_id), "--yes", "--project", root)
    assert cancelled == {"batch": batch_id, "cancelled": 3}
    wus = pyboinc_project.query("select error_mask from workunit where batch=%s", batch_id)
    assert [w["error_mask"] & 16 for w in wus] == [16, 16, 16]
    for fut in futures:  # the running executor learns of it as of any cancelled work unit
        with pytest.raises(WorkunitError):
            fut.result(timeout=60)
    ex.shutdown()
    counts = cli_json("status", str(batch_id), "--project", root)["counts"]
    assert (counts["cancelled"], counts["total"]) == (3, 3)
    assert cli("wait", str(batch_id), "--project", root).returncode == 1


def test_retire_an_orphaned_batch(pyboinc_project: Project, tmp_path: Path) -> None:
    root = str(pyboinc_project.root)
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    path = tmp_path / "orphan"
    proc = subprocess.Popen(
        [sys.executable, str(script), root, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        batch_id = int(proc.stdout.readline())
        refused = cli("retire", str(batch_id), "--yes", "--project", root)
        assert refused.returncode == 1 and "is open by pid" in refused.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crashed master: its lock note stays behind
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    wait_for(lambda: cli_json("status", str(batch_id), "--project", root)["open_by"] is None)
    assert cli_json("status", str(batch_id), "--project", root)["counts"]["queued"] == 3
    retired = cli_json("retire", str(batch_id), "--yes", "--project", root)
    assert retired["cancelled"] == 3 and not path.exists()
    (batch,) = pyboinc_project.query("select state from batch where id=%s", batch_id)
    assert batch["state"] == 4  # RETIRED, as retire_batch leaves it
    wus = pyboinc_project.query(
        "select error_mask, file_delete_state from workunit where batch=%s", batch_id
    )
    assert all(w["error_mask"] & 16 and w["file_delete_state"] == 1 for w in wus)
    gone = cli("status", str(batch_id), "--project", root)
    assert gone.returncode == 3 and "no longer holds it" in gone.stderr
    (row,) = [r for r in cli_json("list", "--project", root) if r["id"] == batch_id]
    assert (row["boinc_state"], row["counts"]) == ("retired", None)
