"""The ``boinc-executor`` command line on remote batches, against the stand-in web pages.

A remote batch is made by a real submitter process (``BoincExecutor(server=...)``)
that is then killed -9, as a laptop's script dies; the command line finds the batch
through this machine's remote registry (``--server``, or ``$BOINC_EXECUTOR_SERVER``)
or its directory, and ``retire`` retires it on the server with the ``retire_batch``
RPC before the directory goes; ``cancel`` aborts the jobs no volunteer was sent.
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
from boinc_executor.backends.remote_rpc import RpcClient
from boinc_executor.batchview import BatchView
from boinc_executor.cli import main
from boinc_executor.errors import BatchNotFoundError
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost
from tests.remote_harness.web import WebServer
from tests.test_remote import wait_for, wu_names

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]

SUBMITTER = """\
import sys, time
from boinc_executor import BoincExecutor
from tests import jobs
ex = BoincExecutor(batch_dir=sys.argv[1])
futures = [ex.submit(jobs.wait_for_file, sys.argv[3], i) for i in range(int(sys.argv[2]))]
ex.flush()
print(ex.batch_id, flush=True)
time.sleep(600)
"""


def orphan(tmp_path: Path, web: WebServer, key: str, name: str, n: int) -> tuple[int, Path]:
    """A remote batch of ``n`` jobs waiting for ``tmp_path/gate``; its submitter was killed -9."""
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    path = tmp_path / name
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
        BOINC_EXECUTOR_SERVER=web.url,
        BOINC_EXECUTOR_AUTHENTICATOR=key,
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(n), str(tmp_path / "gate")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        batch_id = int(proc.stdout.readline())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    wait_for(lambda: BatchView(path).owner() is None)
    return batch_id, path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_retire_a_remote_batch_through_retire_batch(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id, path = orphan(tmp_path, remote_web, admin_key, "b", 3)
    assert len(wu_names(remote_project)) == 3
    monkeypatch.delenv("BOINC_EXECUTOR_AUTHENTICATOR", raising=False)
    monkeypatch.delenv("BOINC_EXECUTOR_AUTHENTICATOR_FILE", raising=False)

    # Found through the remote registry: $BOINC_EXECUTOR_SERVER as the executor reads it.
    monkeypatch.setenv("BOINC_EXECUTOR_SERVER", remote_web.url)
    code, out, err = run(capsys, "status", str(batch_id), "--json")
    assert code == 0, err
    assert json.loads(out)["counts"]["total"] == 3
    monkeypatch.delenv("BOINC_EXECUTOR_SERVER")

    # No key: the server cannot be asked, so nothing is removed.
    code, _, err = run(capsys, "retire", str(batch_id), "--yes", "--server", remote_web.url)
    assert code == 1 and "account key" in err
    assert path.is_dir()
    assert ("retire_batch", "") not in remote_web.calls

    monkeypatch.setenv("BOINC_EXECUTOR_AUTHENTICATOR", admin_key)
    code, out, err = run(
        capsys, "retire", str(batch_id), "--yes", "--json", "--server", remote_web.url
    )
    assert code == 0, err
    assert json.loads(out)["retired"] == [batch_id]
    assert admin_key not in out + err
    assert ("retire_batch", "") in remote_web.calls
    (batch,) = remote_project.query("select state from batch where id=%s", batch_id)
    assert batch["state"] == 4  # RETIRED by the RPC
    wus = remote_project.query("select error_mask from workunit where batch=%s", batch_id)
    assert len(wus) == 3 and all(w["error_mask"] & 16 for w in wus)  # unsent: cancelled
    assert not path.exists()
    assert batch_id not in [b.id for b in RpcClient(remote_web.url, admin_key).query_batches()]
    with pytest.raises(BatchNotFoundError):
        BoincExecutor.resume(batch_id, server=remote_web.url, authenticator=admin_key)
    code, _, err = run(capsys, "status", str(batch_id), "--server", remote_web.url)
    assert code == 3 and "no remote batch" in err


def test_retire_a_remote_batch_by_its_directory(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id, path = orphan(tmp_path, remote_web, admin_key, "kept", 2)
    monkeypatch.setenv("BOINC_EXECUTOR_AUTHENTICATOR", admin_key)
    code, out, err = run(capsys, "retire", str(batch_id), "--yes", "--batch-dir", str(path))
    assert code == 0, err
    assert f"retired on {remote_web.url}" in out and "BOINC" not in out
    (batch,) = remote_project.query("select state from batch where id=%s", batch_id)
    assert batch["state"] == 4
    assert not path.exists()


def test_cancel_a_remote_batch_aborts_only_the_jobs_not_sent(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id, _ = orphan(tmp_path, remote_web, admin_key, "b", 3)
    monkeypatch.setenv("BOINC_EXECUTOR_AUTHENTICATOR", admin_key)
    host = VolunteerHost(
        remote_project, client_dir=tmp_path / "client", ncpus=1, max_tasks_per_rpc=1
    )
    with host.running():  # one job is sent and waits for the gate; two stay unsent
        wait_for(lambda: bool(remote_project.query("select id from result where server_state=4")))
        code, out, err = run(
            capsys, "cancel", str(batch_id), "--yes", "--json", "--server", remote_web.url
        )
        assert code == 0, err
        assert json.loads(out)["cancelled"] == 2
        (tmp_path / "gate").touch()
        done = "select id from workunit where canonical_resultid<>0"
        wait_for(lambda: bool(remote_project.query(done)))
    masks = remote_project.query("select error_mask from workunit where batch=%s", batch_id)
    assert sorted(m["error_mask"] for m in masks) == [0, 16, 16]
    code, out, err = run(capsys, "cancel", str(batch_id), "--yes", "--server", remote_web.url)
    assert code == 0 and "nothing to cancel" in out
