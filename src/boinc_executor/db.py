"""The BOINC project database: the only module that imports ``MySQLdb``.

Connections are opened from a project's ``config.xml`` and every
``MySQLdb.Error`` is translated here, once, into :class:`DatabaseError` (or
:class:`ConfigError` when the cause is configuration) with a message that says
what to do.

BOINC's own tables are written exactly as BOINC's tools write them (MariaDB
runs in strict mode and most columns have no default, so every INSERT lists
every column; boinc-facts §2, §8.8). The one table of our own,
``pyboinc_batch``, is the design's "batch record": batch ID, submitting user and
the batch directory the assimilator delivers into. BOINC's tables are never
altered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import MySQLdb

from .config import ProjectConfig
from .errors import BatchNotFoundError, ConfigError, DatabaseError

__all__ = [
    "BATCH_TABLE",
    "BatchRecord",
    "Database",
]

BATCH_TABLE = "pyboinc_batch"

BATCH_TABLE_DDL = f"""
CREATE TABLE IF NOT EXISTS {BATCH_TABLE} (
    batch_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    user_id INT NOT NULL,
    batch_dir VARCHAR(4096) NOT NULL,
    create_time INT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""

# MySQL/MariaDB client error codes that mean "fix your configuration".
_ACCESS_DENIED = {1044, 1045, 1698}
_UNKNOWN_DB = 1049
_CANNOT_CONNECT = {2002, 2003, 2005, 2006, 2013}
_NO_SUCH_TABLE = 1146


@dataclass(frozen=True)
class BatchRecord:
    """A row of ``pyboinc_batch``: where a batch's results are delivered.

    Attributes:
        batch_id: BOINC's ``batch.id``.
        user_id: the submitting BOINC user.
        batch_dir: the batch directory.
        create_time: Unix time of creation.
    """

    batch_id: int
    user_id: int
    batch_dir: Path
    create_time: int


def _translate(exc: MySQLdb.Error, config: ProjectConfig, doing: str) -> Exception:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    where = (
        f"{config.db_user or '(default user)'}@{config.db_host}:{config.db_port}/{config.db_name}"
    )
    if code in _ACCESS_DENIED:
        return ConfigError(
            f"the BOINC database refused the credentials in {config.root / 'config.xml'} "
            f"({where}): {exc}; check db_user and db_passwd there"
        )
    if code == _UNKNOWN_DB:
        return ConfigError(
            f"the database {config.db_name!r} named in {config.root / 'config.xml'} does not exist "
            f"on {config.db_host}:{config.db_port}; check db_name"
        )
    if code in _CANNOT_CONNECT:
        return DatabaseError(
            f"cannot reach the BOINC database at {config.db_host}:{config.db_port} while {doing}: "
            f"{exc}; is MariaDB/MySQL running, and are db_host (and db_port) in config.xml right?"
        )
    return DatabaseError(f"the BOINC database ({where}) failed while {doing}: {exc}")


class Database:
    """A connection to a BOINC project's database.

    Args:
        config: the project configuration.

    Raises:
        ConfigError: wrong credentials or database name.
        DatabaseError: the server cannot be reached.
    """

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        try:
            self._conn = MySQLdb.connect(
                host=config.db_host,
                port=config.db_port,
                user=config.db_user,
                passwd=config.db_passwd,
                db=config.db_name,
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=10,
            )
        except MySQLdb.Error as exc:
            raise _translate(exc, config, "connecting") from exc

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(MySQLdb.Error):
            self._conn.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def query(
        self, sql: str, args: Sequence[Any] = (), *, doing: str = "querying"
    ) -> list[tuple[Any, ...]]:
        """Run a statement and return its rows, translating errors."""
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, tuple(args))
                return list(cur.fetchall())
        except MySQLdb.Error as exc:
            raise _translate(exc, self.config, doing) from exc

    def execute(self, sql: str, args: Sequence[Any] = (), *, doing: str = "updating") -> int:
        """Run a statement; returns ``lastrowid`` (or the affected row count if none)."""
        try:
            with self._conn.cursor() as cur:
                affected = cur.execute(sql, tuple(args))
                return int(cur.lastrowid or affected or 0)
        except MySQLdb.Error as exc:
            raise _translate(exc, self.config, doing) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group statements so they commit together or not at all."""
        try:
            self._conn.begin()
        except MySQLdb.Error as exc:
            raise _translate(exc, self.config, "starting a transaction") from exc
        try:
            yield
        except BaseException:
            self._conn.rollback()  # type: ignore[no-untyped-call]
            raise
        try:
            self._conn.commit()  # type: ignore[no-untyped-call]
        except MySQLdb.Error as exc:
            raise _translate(exc, self.config, "committing") from exc

    # ------------------------------------------------------------------ apps

    def app_id(self, name: str) -> int | None:
        """The ID of app ``name``, or None if the project has no such app."""
        rows = self.query("SELECT id FROM app WHERE name=%s", (name,), doing="looking up the app")
        return int(rows[0][0]) if rows else None

    # ------------------------------------------------------------------ batch records

    def ensure_batch_table(self) -> None:
        """Create ``pyboinc_batch`` if it does not exist (setup-project does this)."""
        self.execute(BATCH_TABLE_DDL, doing=f"creating the {BATCH_TABLE} table")

    def create_batch(self, *, name: str, app_id: int, user_id: int, batch_dir: Path) -> int:
        """Insert a ``batch`` row as BOINC's PHP does, plus our batch record; returns the ID.

        Raises:
            ConfigError: ``pyboinc_batch`` is missing (setup-project was not run).
        """
        now = int(time.time())
        with self.transaction():
            batch_id = self.execute(
                "INSERT INTO batch (user_id, create_time, logical_start_time, logical_end_time, "
                "est_completion_time, njobs, fraction_done, nerror_jobs, state, completion_time, "
                "credit_estimate, credit_canonical, credit_total, name, app_id, project_state, "
                "description, expire_time) VALUES "
                "(%s, %s, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, %s, %s, 0, %s, 0)",
                (user_id, now, name[:255], app_id, f"boinc-executor batch in {batch_dir}"[:255]),
                doing="creating the batch",
            )
            try:
                self.execute(
                    f"INSERT INTO {BATCH_TABLE} (batch_id, user_id, batch_dir, create_time) "  # noqa: S608
                    "VALUES (%s, %s, %s, %s)",
                    (batch_id, user_id, str(batch_dir), now),
                    doing="recording the batch directory",
                )
            except DatabaseError as exc:
                if (
                    isinstance(exc.__cause__, MySQLdb.Error)
                    and exc.__cause__.args[0] == _NO_SUCH_TABLE
                ):
                    raise ConfigError(
                        f"the project at {self.config.root} has no {BATCH_TABLE} table; run "
                        f"'boinc-executor setup-project {self.config.root}' first"
                    ) from exc
                raise
        return batch_id

    def set_batch_dir(self, batch_id: int, batch_dir: Path) -> None:
        """Record the directory of a batch created before its directory was known."""
        self.execute(
            f"UPDATE {BATCH_TABLE} SET batch_dir=%s WHERE batch_id=%s",  # noqa: S608
            (str(batch_dir), batch_id),
            doing="recording the batch directory",
        )

    def batch_record(self, batch_id: int) -> BatchRecord:
        """The batch record of ``batch_id``.

        Raises:
            BatchNotFoundError: no such batch was created by boinc-executor.
        """
        rows = self.query(
            f"SELECT batch_id, user_id, batch_dir, create_time FROM {BATCH_TABLE} "  # noqa: S608
            "WHERE batch_id=%s",
            (batch_id,),
            doing="looking up the batch",
        )
        if not rows:
            raise BatchNotFoundError(
                f"batch {batch_id} is not a boinc-executor batch of the project at "
                f"{self.config.root}; check the ID and the project"
            )
        row = rows[0]
        return BatchRecord(int(row[0]), int(row[1]), Path(row[2]), int(row[3]))
