"""What a laptop needs for remote submission: the base install, no mysqlclient.

docs/remote.md promises that ``pip install boinc-executor`` is enough to submit over
the web RPCs. The submitter runs in a subprocess where any import of ``MySQLdb``
fails; the stand-in web pages and the volunteer run in the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost
from tests.remote_harness.web import WebServer

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]

LAPTOP = """\
import sys
sys.modules["MySQLdb"] = None  # any import of it now fails
from boinc_executor import BoincExecutor
from tests import jobs
with BoincExecutor(batch_dir=sys.argv[1]) as ex:
    assert ex.backend == "remote"
    assert list(ex.map(jobs.square, range(4), chunksize=2)) == [0, 1, 4, 9]
assert sys.modules["MySQLdb"] is None
print("ok")
"""


def test_remote_submission_without_mysqlclient(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the volunteer's runner
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
        BOINC_EXECUTOR_SERVER=remote_web.url,
        BOINC_EXECUTOR_AUTHENTICATOR=admin_key,
        BOINC_EXECUTOR_POLL_INTERVAL="0.1",
    )
    host = VolunteerHost(remote_project, client_dir=tmp_path / "client", ncpus=2)
    with host.running():
        done = subprocess.run(
            [sys.executable, "-c", LAPTOP, str(tmp_path / "b")],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
