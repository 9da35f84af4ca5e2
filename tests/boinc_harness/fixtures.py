"""TEST STAND-IN for BOINC: pytest fixtures giving a test a stand-in project. Not product code.

Load with ``from tests.boinc_harness.fixtures import *`` (or ``pytest_plugins``):

* ``db_server`` (session): a MariaDB ``DbServer`` (the one on 127.0.0.1:3306, or a
  private server; see mariadb.py).
* ``boinc_project`` (function): a fresh database with BOINC's schema and a project
  directory ``<tmp_path>/boinctest`` laid out by make_project; the database is dropped
  afterwards.
* ``volunteer_host`` (function): a ``VolunteerHost`` for ``boinc_project`` with its client
  data directory in ``<tmp_path>/client``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mariadb import DbServer, create_boinc_database, drop_database, ensure_server
from .project import Project, make_project
from .volunteer import VolunteerHost

__all__ = ["boinc_project", "db_server", "volunteer_host"]


@pytest.fixture(scope="session")
def db_server() -> DbServer:
    """The MariaDB every BOINC test database of this session lives on."""
    return ensure_server()


@pytest.fixture
def boinc_project(db_server: DbServer, tmp_path: Path) -> Iterator[Project]:
    """A freshly made project with its own database (dropped after the test)."""
    db_name = f"bh_{uuid.uuid4().hex[:16]}"
    create_boinc_database(db_server, db_name)
    project = None
    try:
        project = make_project(tmp_path / "boinctest", db_server, db_name)
        yield project
    finally:
        if project is not None:
            project.stop_daemons_now()
        drop_database(db_server, db_name)


@pytest.fixture
def volunteer_host(boinc_project: Project, tmp_path: Path) -> VolunteerHost:
    """One volunteer host (client dir ``<tmp_path>/client``) attached to ``boinc_project``."""
    return VolunteerHost(boinc_project, client_dir=tmp_path / "client")
