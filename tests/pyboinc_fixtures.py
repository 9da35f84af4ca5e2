"""Fixtures for a stand-in BOINC project that ``boinc-executor setup-project`` has configured.

Loaded by tests/conftest.py next to the harness fixtures (both need mysqlclient):

* ``pyboinc_project`` (function): the harness ``boinc_project`` after
  :func:`boinc_executor.project.setup_project` ran on it: app ``pyboinc``, its templates,
  app versions for every platform, ``pyboinc_batch``, the daemon scripts in bin/ and the
  assimilator/validator daemons in config.xml. Returns the harness ``Project``.
* ``pyboinc_host`` (function): a ``VolunteerHost`` (client dir ``<tmp_path>/client``)
  attached to ``pyboinc_project``; it runs jobs through the registered app version
  (launcher -> ``python3 pyboinc.zip`` -> runner).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from boinc_executor.project import setup_project
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost

__all__ = ["pyboinc_host", "pyboinc_project"]


@pytest.fixture
def pyboinc_project(boinc_project: Project) -> Project:
    """A fresh stand-in project configured by setup-project (its database is dropped after)."""
    setup_project(boinc_project.root)
    return boinc_project


@pytest.fixture
def pyboinc_host(pyboinc_project: Project, tmp_path: Path) -> VolunteerHost:
    """One volunteer host on ``pyboinc_project`` running jobs with the registered app version."""
    return VolunteerHost(pyboinc_project, client_dir=tmp_path / "client")
