"""Shared test configuration.

Every test runs with its own ``BOINC_EXECUTOR_HOME`` (local batch registry and
default batch directories) and without ``PYBOINC_DIR``, so nothing touches the
developer's home directory and the embedded backend is what ``BoincExecutor()``
selects unless a test says otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

HAVE_MYSQLDB = importlib.util.find_spec("MySQLdb") is not None
_BOINC_MODULE = "pytestmark = pytest.mark.boinc"

if HAVE_MYSQLDB:
    from tests.boinc_harness.fixtures import *  # noqa: F403
    from tests.pyboinc_fixtures import *  # noqa: F403
    from tests.remote_fixtures import *  # noqa: F403


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """Without mysqlclient (the ``nomysql`` tox env), leave out what needs the BOINC database.

    Those are the harness and the modules marked ``boinc`` as a whole; they cannot
    even be imported there, and the ``tests`` env runs every one of them.
    """
    if HAVE_MYSQLDB:
        return None
    if "boinc_harness" in collection_path.parts:
        return True
    if collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return _BOINC_MODULE in collection_path.read_text(encoding="utf-8")
    return None


@pytest.fixture(autouse=True)
def _isolated_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("bx-home")
    monkeypatch.setenv("BOINC_EXECUTOR_HOME", str(home))
    monkeypatch.delenv("PYBOINC_DIR", raising=False)
    monkeypatch.delenv("BOINC_EXECUTOR_BATCH_DIR", raising=False)
    for name in ("SERVER", "AUTHENTICATOR", "AUTHENTICATOR_FILE"):
        monkeypatch.delenv(f"BOINC_EXECUTOR_{name}", raising=False)
    yield home
