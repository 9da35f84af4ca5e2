"""BOINC's enum codes and the rows boinc-executor reads from a project's database.

Plain data, free of ``MySQLdb``: :mod:`boinc_executor.backends.db` (the only module that
talks to the database) returns these, and code that only handles the values,
such as ``BoincExecutor.progress()``'s callers, needs no database driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BatchCounts", "BatchRecord", "FailedWorkunit", "Stall"]

# BOINC enum codes (db/boinc_db_types.h; boinc-facts §2).
RESULT_UNSENT = 2
RESULT_IN_PROGRESS = 4
RESULT_OVER = 5
OUTCOME_SUCCESS = 1
OUTCOME_CLIENT_ERROR = 3
OUTCOME_DIDNT_NEED = 5
OUTCOME_VALIDATE_ERROR = 6
WU_ERROR_CANCELLED = 16
BATCH_COMPLETE = 2


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


@dataclass(frozen=True)
class BatchCounts:
    """Work units of a batch by where BOINC has them (one aggregate query).

    ``BoincBackend.progress()`` returns this (as ``boinc.Progress``).

    Attributes:
        total: work units created so far.
        unsent: waiting for a host (no result of it has been sent yet).
        in_progress: sent to a host, no final outcome yet (includes results
            waiting for validation).
        done: has a valid (canonical) result; its record is on its way.
        failed: BOINC gave up on it (``error_mask`` is set), cancelled ones included.
        credit: the sum of the canonical results' credit.
        stuck: when BOINC's database shows work of the batch that a daemon should
            have handled long ago, which daemon and the command that checks it
            (see :mod:`boinc_executor.backends.stuck`); None when nothing is stuck.
    """

    total: int
    unsent: int
    in_progress: int
    done: int
    failed: int
    credit: float = 0.0
    stuck: str | None = None


@dataclass(frozen=True)
class Stall:
    """Work units of a batch that one daemon has left waiting too long.

    Attributes:
        daemon: ``transitioner``, ``app version`` (nothing the scheduler may send),
            ``validator`` or ``assimilator``.
        workunits: how many are waiting for it.
        waited: seconds the oldest of them has waited.
    """

    daemon: str
    workunits: int
    waited: int


@dataclass(frozen=True)
class FailedWorkunit:
    """A work unit BOINC gave up on, with what its last run left behind.

    Attributes:
        wu_id: ``workunit.id``.
        name: the work unit's name (the job name).
        error_mask: its ``error_mask`` bits.
        result_name: the result the details come from ("" if none ran).
        exit_status: that result's exit status, None if no result ran.
        stderr_out: that result's ``stderr_out``.
    """

    wu_id: int
    name: str
    error_mask: int
    result_name: str = ""
    exit_status: int | None = None
    stderr_out: str = ""
