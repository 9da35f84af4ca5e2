"""On the BOINC harness: the script's classes and exceptions come back, and output is readable.

The volunteer runs our app version (launcher -> pyboinc.zip -> runner) under the
harness's client; records travel through the real assimilator into BATCH_DIR/new/,
or, submitted remotely, back over the project's web pages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor, TaskOutput, task_output
from boinc_executor.errors import RemoteTraceback
from tests import script_types as st
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _volunteer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The volunteer's Python finds tests.script_types; the backend polls the database often.
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")


@pytest.fixture
def host(pyboinc_project: Project, tmp_path: Path) -> VolunteerHost:
    return VolunteerHost(
        pyboinc_project, client_dir=tmp_path / "client", ncpus=2, max_tasks_per_rpc=2
    )


def test_classes_exceptions_and_output_on_boinc(
    pyboinc_project: Project, host: VolunteerHost
) -> None:
    with host.running(), BoincExecutor(project_dir=pyboinc_project.root) as ex:
        kinds = ex.submit(st.every_kind, 2)
        chatty = ex.submit(st.chatty, 7)
        failing = ex.submit(st.raise_app_error, 3)
        value = kinds.result(timeout=120)
        assert value["point"] == st.Point(2, -2) and type(value["point"]) is st.Point
        assert value["enums"][0] is st.Color.RED and type(value["tuples"][0]) is st.Pair
        assert type(value["error"]) is st.AppError and value["error"].code == 7
        assert chatty.result(timeout=120) == 7
        assert ex.output(chatty) == TaskOutput("out 7\n", "err 7\n")
        with pytest.raises(st.AppError) as info:
            failing.result(timeout=120)
        assert info.value.code == 3
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "raise_app_error" in str(info.value.__cause__)
        assert task_output(ex.batch_dir, 1) == TaskOutput("out 7\n", "err 7\n")
        assert task_output(ex.batch_dir, 0) == TaskOutput()


def test_classes_exceptions_and_output_submitted_remotely(
    remote_executor_factory: Callable[..., BoincExecutor], tmp_path: Path
) -> None:
    with remote_executor_factory(batch_dir=tmp_path / "b") as ex:
        kinds = ex.submit(st.every_kind, 5)
        chatty = ex.submit(st.chatty, 8)
        failing = ex.submit(st.raise_app_error, 4)
        value = kinds.result(timeout=120)
        assert type(value["frozen"]) is st.Frozen and type(value["slotted"]) is st.Slotted
        assert value["enums"][2] is st.Perm.READ | st.Perm.WRITE
        assert chatty.result(timeout=120) == 8
        assert ex.output(chatty) == TaskOutput("out 8\n", "err 8\n")
        with pytest.raises(st.AppError) as info:
            failing.result(timeout=120)
        assert info.value.code == 4 and isinstance(info.value.__cause__, RemoteTraceback)
        assert task_output(ex.batch_dir, 1) == TaskOutput("out 8\n", "err 8\n")
