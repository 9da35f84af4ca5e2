"""The registered ``pyboinc`` app version runs jobs the way a BOINC client runs it.

A job is staged and created exactly as docs/protocol.md's BOINC contract says
(program file + data file in the download hierarchy, ``create_work --appname pyboinc
--batch N``, a ``pyboinc_batch`` record), then the harness VolunteerHost runs it through
what setup-project registered: launcher -> ``python3 pyboinc.zip`` -> runner, in both
slot layouts, and the assimilator delivers the record into the batch directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("MySQLdb", reason="the BOINC harness needs mysqlclient")

from boinc_executor import protocol
from boinc_executor.backends.db import Database
from boinc_executor.config import ProjectConfig
from boinc_executor.protocol.decoding import TypePolicy
from boinc_executor.server import appversion
from boinc_executor.server.project import setup_project
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost

pytestmark = pytest.mark.boinc

# A bound for "the cycle finishes at all", generous for a loaded CI machine; not a timing test.
LIVENESS = 100.0


def submit(project: Project, batch_dir: Path, fn, calls, index: int = 0) -> str:
    """Stage a job's two files and create its work unit in a new batch; returns the job name."""
    config = ProjectConfig.load(project.root)
    with Database(config) as db:
        app_id = db.app_id("pyboinc")
        assert app_id is not None
        batch_id = db.create_batch(name=f"t{index}", app_id=app_id, user_id=1,
                                   batch_dir=batch_dir)
    (batch_dir / "new").mkdir(parents=True, exist_ok=True)
    job = protocol.job_name("pyb", batch_id, index)
    program = protocol.encode_program(fn)
    files = {protocol.program_file_name("pyb", program): program,
             protocol.data_file_name(job): protocol.encode_data(job, calls)}
    for name, data in files.items():
        path = project.download_path(name)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    done = project.run("create_work", "--appname", "pyboinc", "--batch", str(batch_id),
                       "--wu_name", job, *files)
    assert done.returncode == 0, done.stdout + done.stderr
    return job


def assimilated(project: Project, job: str) -> bool:
    wu = project.workunit(job)
    return wu is not None and wu["assimilate_state"] == 2


def delivered(batch_dir: Path, job: str, calls: int) -> protocol.ResultRecord:
    (path,) = (batch_dir / "new").glob(f"{job}.*.result")
    return protocol.decode_result(path.read_bytes(), TypePolicy(), expect_job=job,
                                  expect_calls=calls)


@pytest.mark.parametrize("soft_links", [False, True], ids=["copy_file", "soft_links"])
def test_job_runs_through_the_registered_app_version(
    pyboinc_project: Project, tmp_path: Path, soft_links: bool
) -> None:
    host = VolunteerHost(pyboinc_project, client_dir=tmp_path / "client", soft_links=soft_links)
    batch_dir = tmp_path / "batch"
    scale = 2.5
    job = submit(pyboinc_project, batch_dir, lambda x: (x * scale, sys.version_info[:2]),
                 [((2,), {}), ((4,), {})])
    host.run_until(lambda: assimilated(pyboinc_project, job), timeout=LIVENESS)
    (result,) = pyboinc_project.results(job)
    assert (result["outcome"], result["validate_state"], result["exit_status"]) == (1, 1, 0), \
        result["stderr_out"]
    record = delivered(batch_dir, job, 2)
    assert record.ok, record.error
    here = tuple(sys.version_info[:2])
    assert record.outcomes == [(True, (5.0, here)), (True, (10.0, here))]
    assert pyboinc_project.workunit(job)["canonical_resultid"] == result["id"]


def test_missing_python_fails_the_task_with_a_clear_message(
    pyboinc_host: VolunteerHost, pyboinc_project: Project, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A PATH with the shell's helpers but no Python at all.
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("head", "tail", "sed", "grep", "dirname", "rm", "mkdir", "tar"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    batch_dir = tmp_path / "batch"
    job = submit(pyboinc_project, batch_dir, len, [(("abc",), {})])
    monkeypatch.setenv("PATH", str(tools))
    pyboinc_host.run_until(lambda: (pyboinc_project.results(job) or [{}])[0].get(
        "server_state") == 5, timeout=LIVENESS)
    monkeypatch.undo()
    (result,) = pyboinc_project.results(job)
    assert (result["outcome"], result["exit_status"]) == (3, appversion.EXIT_NO_PYTHON)
    assert "no Python interpreter found: python3" in result["stderr_out"]
    assert "Install Python 3." in result["stderr_out"]


def test_shipped_interpreter_is_unpacked_and_used(
    boinc_project: Project, tmp_path: Path
) -> None:
    """An operator-supplied relocatable Python (here: a tarball whose bin/python3 wraps this
    interpreter, standing in for a python-build-standalone build) replaces the host's."""
    stage = tmp_path / "pystage" / "python" / "bin"
    stage.mkdir(parents=True)
    (stage / "python3").write_text(
        f"#!/bin/sh\necho shipped-python-used >&2\nexec {sys.executable} \"$@\"\n")
    (stage / "python3").chmod(0o755)
    archive = tmp_path / "cpython-linux.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "pystage" / "python", arcname="python")
    setup_project(boinc_project.root, interpreters={"x86_64-pc-linux-gnu": archive})
    version = boinc_project.root / "apps/pyboinc/1.00/x86_64-pc-linux-gnu"
    shipped = [p.name for p in version.iterdir() if p.name.startswith("pyboinc_python_")]
    assert len(shipped) == 1 and shipped[0].endswith(".tar.gz")
    assert shipped[0] not in os.listdir(boinc_project.root / "apps/pyboinc/1.00/arm64-apple-darwin")
    host = VolunteerHost(boinc_project, client_dir=tmp_path / "client")
    batch_dir = tmp_path / "batch"
    job = submit(boinc_project, batch_dir, abs, [((-3,), {})])
    host.run_until(lambda: assimilated(boinc_project, job), timeout=LIVENESS)
    (result,) = boinc_project.results(job)
    assert result["outcome"] == 1, result["stderr_out"]
    assert "shipped-python-used" in result["stderr_out"]
    assert delivered(batch_dir, job, 1).outcomes == [(True, 3)]
