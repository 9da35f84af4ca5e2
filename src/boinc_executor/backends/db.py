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
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import MySQLdb

from ..config import ProjectConfig
from ..errors import BatchNotFoundError, ConfigError, DatabaseError
from .rows import (
    BATCH_COMPLETE,
    OUTCOME_CLIENT_ERROR,
    OUTCOME_DIDNT_NEED,
    OUTCOME_SUCCESS,
    OUTCOME_VALIDATE_ERROR,
    RESULT_OVER,
    RESULT_UNSENT,
    WU_ERROR_CANCELLED,
    BatchCounts,
    BatchRecord,
    FailedWorkunit,
)

__all__ = [
    "BATCH_TABLE",
    "BatchCounts",
    "BatchRecord",
    "Database",
    "FailedWorkunit",
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
_GONE_AWAY = 2006  # CR_SERVER_GONE_ERROR: the connection was dead before the statement
_LOST = 2013  # CR_SERVER_LOST: the connection died during the statement

# Names per IN (...) list: keeps statements far below max_allowed_packet.
_IN_CHUNK = 1000


def _chunks(items: Sequence[Any], n: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


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
        self._in_transaction = False
        self._conn = self._connect()

    def _connect(self) -> MySQLdb.connections.Connection:
        config = self.config
        try:
            return MySQLdb.connect(
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

    def _run(
        self, sql: str, args: Sequence[Any], *, doing: str, idempotent: bool
    ) -> tuple[list[tuple[Any, ...]], int, int]:
        """Run one statement: (rows, lastrowid, affected rows), translating errors.

        The server drops a connection that idles past its ``wait_timeout`` (8 h by
        default) and a batch runs for days, so a connection found gone is opened
        again once. A statement is re-sent only when it cannot have run: the
        connection was already gone (2006), or it is a read lost mid-way (2013);
        never inside a transaction.
        """
        for attempt in (0, 1):
            try:
                with self._conn.cursor() as cur:
                    affected = cur.execute(sql, tuple(args))
                    return list(cur.fetchall()), int(cur.lastrowid or 0), int(affected or 0)
            except MySQLdb.Error as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                resend = code == _GONE_AWAY or (code == _LOST and idempotent)
                if attempt or self._in_transaction or not resend:
                    raise _translate(exc, self.config, doing) from exc
                self.close()
                self._conn = self._connect()
        raise AssertionError("unreachable")  # pragma: no cover

    def query(
        self, sql: str, args: Sequence[Any] = (), *, doing: str = "querying"
    ) -> list[tuple[Any, ...]]:
        """Run a read and return its rows, translating errors."""
        return self._run(sql, args, doing=doing, idempotent=True)[0]

    def execute(self, sql: str, args: Sequence[Any] = (), *, doing: str = "updating") -> int:
        """Run a statement; returns ``lastrowid`` (or the affected row count if none)."""
        _, lastrowid, affected = self._run(sql, args, doing=doing, idempotent=False)
        return lastrowid or affected

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group statements so they commit together or not at all."""
        try:
            self._conn.ping()
            self._conn.begin()
        except MySQLdb.Error:
            self.close()  # gone away while idle: a fresh connection, before anything is sent
            self._conn = self._connect()
            self._conn.begin()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            with contextlib.suppress(MySQLdb.Error):
                self._conn.rollback()  # type: ignore[no-untyped-call]
            raise
        finally:
            self._in_transaction = False
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

    # ------------------------------------------------------------------ project checks

    def has_table(self, name: str) -> bool:
        """Whether the project database has table ``name``."""
        rows = self.query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema=DATABASE() "
            "AND table_name=%s",
            (name,),
            doing=f"looking for the {name} table",
        )
        return bool(rows)

    def user_exists(self, user_id: int) -> bool:
        """Whether BOINC user ``user_id`` exists."""
        rows = self.query("SELECT 1 FROM user WHERE id=%s", (user_id,), doing="looking up the user")
        return bool(rows)

    # ------------------------------------------------------------------ work units

    def existing_workunits(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` already exist as work units (the UNIQUE name index answers)."""
        found: set[str] = set()
        for chunk in _chunks(names):
            rows = self.query(
                f"SELECT name FROM workunit WHERE name IN ({_placeholders(len(chunk))})",  # noqa: S608
                chunk,
                doing="looking up existing work units",
            )
            found.update(_text(row[0]) for row in rows)
        return found

    def count_batch_workunits(self, batch_id: int) -> int:
        """How many work units carry ``batch_id``."""
        rows = self.query(
            "SELECT COUNT(*) FROM workunit WHERE batch=%s", (batch_id,), doing="counting jobs"
        )
        return int(rows[0][0])

    def cancel_workunits(self, names: Sequence[str]) -> int:
        """Cancel work units as BOINC's ``cancel_jobs`` does; returns how many were marked.

        Results not yet sent become OVER / DIDNT_NEED and each work unit gets
        ``error_mask |= 16`` and ``transition_time = now``, so the transitioner
        finishes it and the assimilator reports it. Results already on hosts
        run on (their output is discarded).
        """
        now = int(time.time())
        marked = 0
        with self.transaction():
            for chunk in _chunks(names):
                names_in = f"IN ({_placeholders(len(chunk))})"
                self.execute(
                    "UPDATE result r JOIN workunit w ON w.id=r.workunitid "  # noqa: S608
                    "SET r.server_state=%s, r.outcome=%s "
                    f"WHERE r.server_state=%s AND w.name {names_in}",
                    (RESULT_OVER, OUTCOME_DIDNT_NEED, RESULT_UNSENT, *chunk),
                    doing="cancelling unsent results",
                )
                marked += self._rowcount(
                    "UPDATE workunit SET error_mask=error_mask|%s, transition_time=%s "  # noqa: S608
                    f"WHERE name {names_in}",
                    (WU_ERROR_CANCELLED, now, *chunk),
                    doing="cancelling work units",
                )
        return marked

    def _rowcount(self, sql: str, args: Sequence[Any], *, doing: str) -> int:
        return self._run(sql, args, doing=doing, idempotent=False)[2]

    def sent_since(self, batch_id: int, since: int) -> list[tuple[str, int]]:
        """(work unit name, sent_time) of the batch's results sent at or after ``since``.

        ``sent_time`` is set by the scheduler when a result goes IN_PROGRESS and
        kept afterwards, so a watermark on it finds each start once even when
        the result finished between two polls. The ``res_batch`` index narrows
        the scan to the batch.
        """
        rows = self.query(
            "SELECT w.name, r.sent_time FROM result r JOIN workunit w ON w.id=r.workunitid "
            "WHERE r.batch=%s AND r.sent_time>=%s AND r.sent_time>0",
            (batch_id, since),
            doing="checking which jobs were sent",
        )
        return [(_text(name), int(sent)) for name, sent in rows]

    def failed_workunits(self, batch_id: int, skip: Collection[str] = ()) -> list[FailedWorkunit]:
        """The batch's work units with ``error_mask`` set, except those named in ``skip``.

        Each comes with its most telling result: the last client error, else
        the last result that ran at all.
        """
        rows = self.query(
            "SELECT id, name, error_mask FROM workunit WHERE batch=%s AND error_mask<>0",
            (batch_id,),
            doing="checking for failed jobs",
        )
        wus = [(int(i), _text(n), int(m)) for i, n, m in rows if _text(n) not in skip]
        if not wus:
            return []
        best: dict[int, tuple[int, str, int, str]] = {}
        ran = (OUTCOME_SUCCESS, OUTCOME_CLIENT_ERROR, OUTCOME_VALIDATE_ERROR)
        for chunk in _chunks([w[0] for w in wus]):
            results = self.query(
                "SELECT workunitid, name, outcome, exit_status, stderr_out FROM result "  # noqa: S608
                f"WHERE workunitid IN ({_placeholders(len(chunk))}) ORDER BY id",
                chunk,
                doing="reading failed jobs' results",
            )
            for wu_id, name, outcome, status, stderr in results:
                rank = 2 if outcome == OUTCOME_CLIENT_ERROR else 1 if outcome in ran else 0
                if rank and rank >= best.get(int(wu_id), (0, "", 0, ""))[0]:
                    best[int(wu_id)] = (rank, _text(name), int(status), _text(stderr))
        failed = []
        for wu_id, name, mask in wus:
            found = best.get(wu_id)
            if found is None:
                failed.append(FailedWorkunit(wu_id, name, mask))
            else:
                failed.append(FailedWorkunit(wu_id, name, mask, found[1], found[2], found[3]))
        return failed

    # ------------------------------------------------------------------ batch state

    def batch_counts(self, batch_id: int) -> BatchCounts:
        """Count the batch's work units the way BOINC's PHP ``get_batch_params`` does.

        A work unit with ``canonical_resultid`` set is done, one with
        ``error_mask`` set has failed; of the rest, those with a result that
        reached a host are in progress and the others unsent.
        """
        rows = self.query(
            "SELECT COUNT(*), COALESCE(SUM(w.error_mask<>0), 0), "
            "COALESCE(SUM(w.error_mask=0 AND w.canonical_resultid<>0), 0), "
            "COALESCE(SUM(w.error_mask=0 AND w.canonical_resultid=0 AND EXISTS ("
            "SELECT 1 FROM result r WHERE r.workunitid=w.id AND r.sent_time>0)), 0), "
            "COALESCE(SUM(IF(w.canonical_resultid<>0, w.canonical_credit, 0)), 0) "
            "FROM workunit w WHERE w.batch=%s",
            (batch_id,),
            doing="counting the batch's jobs",
        )
        total, failed, done, running, credit = rows[0]
        total, failed, done, running = int(total), int(failed), int(done), int(running)
        return BatchCounts(
            total=total,
            unsent=total - failed - done - running,
            in_progress=running,
            done=done,
            failed=failed,
            credit=float(credit),
        )

    def update_batch(self, batch_id: int, *, complete: bool) -> BatchCounts:
        """Refresh the ``batch`` row's counters as BOINC's PHP does; mark it COMPLETE if asked.

        Daemons never write the ``batch`` table (boinc-facts §4, §8.6): only the
        web code's ``get_batch_params`` sets ``njobs``, ``nerror_jobs``,
        ``fraction_done``, ``credit_canonical`` and, when every job is done,
        ``state = 2`` (COMPLETE) and ``completion_time``.
        """
        counts = self.batch_counts(batch_id)
        finished = counts.done + counts.failed
        fraction = finished / counts.total if counts.total else 1.0
        sets = "njobs=%s, nerror_jobs=%s, fraction_done=%s, credit_canonical=%s"
        args: list[Any] = [counts.total, counts.failed, fraction, counts.credit]
        if complete:
            sets += ", state=%s, completion_time=%s"
            args += [BATCH_COMPLETE, time.time()]
        self.execute(
            f"UPDATE batch SET {sets} WHERE id=%s",  # noqa: S608
            (*args, batch_id),
            doing="updating the batch",
        )
        return counts
