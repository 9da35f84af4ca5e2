"""Fixtures for a stand-in BOINC project that ``boinc-executor setup-project`` has configured.

Loaded by tests/conftest.py next to the harness fixtures (both need mysqlclient):

* ``pyboinc_project`` (function): the harness ``boinc_project`` after
  :func:`boinc_executor.server.project.setup_project` ran on it: app ``pyboinc``, its templates,
  app versions for every platform, ``pyboinc_batch``, the daemon scripts in bin/ and the
  assimilator/validator daemons in config.xml. Returns the harness ``Project``.
* ``pyboinc_host`` (function): a ``VolunteerHost`` (client dir ``<tmp_path>/client``)
  attached to ``pyboinc_project``; it runs jobs through the registered app version
  (launcher -> ``python3 pyboinc.zip`` -> runner).
* ``boinc_executor_factory`` (function): ``factory(max_workers=2, **kwargs)`` returns a
  ``BoincExecutor`` on ``pyboinc_project`` while a volunteer host with ``max_workers``
  CPUs steps in the background (started with the first executor, stopped at teardown).
  The behaviour suite runs its BOINC case through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from boinc_executor import BoincExecutor
from boinc_executor.server.project import setup_project
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost

__all__ = ["boinc_executor_factory", "pyboinc_host", "pyboinc_project"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pyboinc_project(boinc_project: Project) -> Project:
    """A fresh stand-in project configured by setup-project (its database is dropped after)."""
    setup_project(boinc_project.root)
    return boinc_project


@pytest.fixture
def pyboinc_host(pyboinc_project: Project, tmp_path: Path) -> VolunteerHost:
    """One volunteer host on ``pyboinc_project`` running jobs with the registered app version."""
    return VolunteerHost(pyboinc_project, client_dir=tmp_path / "client")


@pytest.fixture
def boinc_executor_factory(
    pyboinc_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., BoincExecutor]]:
    """Make ``BoincExecutor``s on ``pyboinc_project`` with a volunteer stepping meanwhile.

    The volunteer has ``max_workers`` CPUs and an empty work buffer (it fetches only
    enough jobs to fill them), so queued jobs stay unsent, and cancellable, like a
    ``ProcessPoolExecutor``'s queue.

    The volunteer's Python finds the test job functions (``tests.jobs``) on its
    PYTHONPATH, as a real volunteer's would find a library its project ships. The
    backend polls the database every 0.1 s so tests do not wait on it.
    """
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")
    with contextlib.ExitStack() as stack:
        hosts: list[VolunteerHost] = []

        def factory(max_workers: int = 2, **kwargs: Any) -> BoincExecutor:
            if not hosts:
                host = VolunteerHost(
                    pyboinc_project,
                    client_dir=tmp_path / "client",
                    ncpus=max_workers,
                    max_tasks_per_rpc=max_workers,
                )
                stack.enter_context(host.running())
                hosts.append(host)
            return BoincExecutor(project_dir=pyboinc_project.root, **kwargs)

        yield factory
