"""Fixtures for remote submission against the stand-in web pages (tests/remote_harness).

Loaded by tests/conftest.py next to the harness fixtures (both need mysqlclient):

* ``remote_project`` (function): ``pyboinc_project`` after ``setup-project --remote``
  (:func:`boinc_executor.server.remote.setup_remote`).
* ``remote_web`` (function): the stand-in ``WebServer`` serving that project on a
  loopback port (stopped at teardown).
* ``admin_key`` (function): user 1's authenticator (submit_all=1, as the verified
  installation had).
* ``remote_executor_factory`` (function): ``factory(max_workers=2, **kwargs)`` returns a
  ``BoincExecutor(server=<stand-in URL>, authenticator=<admin key>)`` while a volunteer
  with ``max_workers`` CPUs steps in the background; the behaviour suite runs its
  remote case through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from boinc_executor import BoincExecutor
from boinc_executor.server.remote import setup_remote
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost
from tests.remote_harness.web import WebServer

__all__ = ["admin_key", "remote_executor_factory", "remote_project", "remote_web"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def remote_project(pyboinc_project: Project) -> Project:
    """A stand-in project set up by ``setup-project`` and ``setup-project --remote``."""
    setup_remote(pyboinc_project.root)
    return pyboinc_project


@pytest.fixture
def remote_web(remote_project: Project) -> Iterator[WebServer]:
    """The project's remote-submission pages on a loopback port."""
    web = WebServer(remote_project.root).start()
    try:
        yield web
    finally:
        web.stop()


@pytest.fixture
def admin_key(remote_project: Project) -> str:
    """The authenticator of user 1, who may submit to every app."""
    return str(
        remote_project.query("select authenticator from user where id=1")[0]["authenticator"]
    )


@pytest.fixture
def remote_executor_factory(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., BoincExecutor]]:
    """Make remote ``BoincExecutor``s with a volunteer stepping meanwhile."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")
    with contextlib.ExitStack() as stack:
        hosts: list[VolunteerHost] = []

        def factory(max_workers: int = 2, **kwargs: Any) -> BoincExecutor:
            if not hosts:
                host = VolunteerHost(
                    remote_project,
                    client_dir=tmp_path / "client",
                    ncpus=max_workers,
                    max_tasks_per_rpc=max_workers,
                )
                stack.enter_context(host.running())
                hosts.append(host)
            return BoincExecutor(server=remote_web.url, authenticator=admin_key, **kwargs)

        yield factory
