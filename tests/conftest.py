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

# The BOINC harness fixtures need mysqlclient; the `nomysql` tox env runs without it.
if (
    importlib.util.find_spec("MySQLdb") is not None
    and (Path(__file__).parent / "boinc_harness" / "fixtures.py").exists()
):
    from tests.boinc_harness.fixtures import *  # noqa: F403

    if (Path(__file__).parent / "pyboinc_fixtures.py").exists():
        from tests.pyboinc_fixtures import *  # noqa: F403


@pytest.fixture(autouse=True)
def _isolated_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("bx-home")
    monkeypatch.setenv("BOINC_EXECUTOR_HOME", str(home))
    monkeypatch.delenv("PYBOINC_DIR", raising=False)
    monkeypatch.delenv("BOINC_EXECUTOR_BATCH_DIR", raising=False)
    yield home
