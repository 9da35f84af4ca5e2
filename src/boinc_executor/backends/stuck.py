"""Stuck batches explain themselves: which BOINC daemon is not doing its job, and how to check.

On a real project a daemon that does not run leaves no error anywhere (boinc-facts
§9.1): a validator that lost its lock leaves every result at validate_state 0, an
assimilator that exited leaves work units at assimilate_state 1, and the executor's
futures would wait forever. Nor does a project whose app has no app version the
scheduler may send (none registered, all deprecated, or the app deprecated): its
results stay unsent. The database shows both, though. :func:`diagnose` asks it
(:func:`stalled`) for work of a batch that has waited longer than
:data:`FACTOR` sleep intervals of the daemon that should handle it (at least
:data:`MIN_SECONDS`, or ``$BOINC_EXECUTOR_STUCK_AFTER`` seconds), and words the answer
for a log warning, ``progress()`` and ``boinc-executor status``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BoincExecutorError, ConfigError
from ..protocol.names import APP_NAME
from ..server.entries import DaemonEntry, read_entries
from .db import Database
from .rows import OUTCOME_SUCCESS, RESULT_OVER, RESULT_UNSENT, Stall

__all__ = [
    "ENV_STUCK_AFTER",
    "FACTOR",
    "MIN_SECONDS",
    "StuckWatch",
    "Thresholds",
    "describe",
    "diagnose",
    "find_stall",
    "stalled",
]

ENV_STUCK_AFTER = "BOINC_EXECUTOR_STUCK_AFTER"
#: Sleep intervals a daemon may let work wait before the batch counts as stuck.
FACTOR = 5
#: Never report sooner than this: a busy daemon may take one long pass.
MIN_SECONDS = 60
#: What waits, per culprit, in the order work passes them (the first one is the one to fix).
_WAITS_FOR = {
    "transitioner": "were due for the transitioner",
    "app version": "were never sent",
    "validator": "were reported but not validated",
    "assimilator": "were validated (or failed) but not assimilated",
}
_DAEMONS = ("transitioner", "validator", "assimilator")


@dataclass(frozen=True)
class Thresholds:
    """Seconds after which waiting work counts as stuck, per culprit, and the daemons' commands.

    Attributes:
        seconds: per daemon name (transitioner, validator, assimilator), and for
            "app version": unsent results of an app the scheduler has nothing to send for.
        commands: the config.xml command of each daemon, when it has an entry.
    """

    seconds: dict[str, int]
    commands: dict[str, str]

    @classmethod
    def for_project(cls, root: Path) -> Thresholds:
        """From config.xml's daemon entries (their ``--sleep_interval``) or the environment."""
        override = _env_seconds()
        try:
            _host, entries = read_entries(root)
        except ConfigError:
            entries = []
        found: dict[str, DaemonEntry] = {}
        for e in entries:
            if e.disabled:
                continue
            if e.program == "transitioner":
                found.setdefault("transitioner", e)
            elif e.app == APP_NAME and e.program.endswith("validator"):
                found.setdefault("validator", e)
            elif e.app == APP_NAME and e.program.endswith("assimilator"):
                found.setdefault("assimilator", e)
        # No sleep interval governs the app version: the feeder re-reads app versions
        # when reread_db is touched, so a fix made now is seen within a pass or two.
        seconds = {"app version": override or MIN_SECONDS}
        for daemon in _DAEMONS:
            entry = found.get(daemon)
            sleep = entry.sleep_interval if entry is not None else 10.0
            seconds[daemon] = override or max(MIN_SECONDS, int(FACTOR * sleep + 0.5))
        return cls(seconds=seconds, commands={d: e.describe() for d, e in found.items()})


def _env_seconds() -> int | None:
    raw = os.environ.get(ENV_STUCK_AFTER)
    if not raw:
        return None
    try:
        value = int(float(raw))
    except ValueError:
        raise ConfigError(f"{ENV_STUCK_AFTER}={raw!r} is not a number of seconds") from None
    if value < 1:
        raise ConfigError(f"{ENV_STUCK_AFTER} must be at least 1 second, got {raw!r}")
    return value


def describe(stall: Stall, root: Path, thresholds: Thresholds) -> str:
    """One sentence: what waits, which daemon is not doing its job, what checks it."""
    daemon = stall.daemon
    waits = f"{stall.workunits} work unit(s) {_WAITS_FOR[daemon]} for {stall.waited} s"
    if daemon == "app version":
        return (
            f"{waits}: the app {APP_NAME} has no app version the scheduler may send (none "
            "registered, every one deprecated, or the app itself deprecated), so no "
            f"volunteer gets them. Check on the BOINC server with `boinc-executor doctor "
            f"{root}`; `boinc-executor setup-project {root}` registers this release's"
        )
    cmd = thresholds.commands.get(daemon)
    who = f"the {daemon} (`{cmd}`)" if cmd else f"no {daemon} daemon in config.xml"
    return (
        f"{waits}: {who} is not doing its job. Check on the BOINC server with "
        f'`boinc-executor doctor {root}` and `bin/status -v` (its "locked" column)'
    )


def stalled(
    db: Database,
    batch_id: int,
    *,
    transition_after: int,
    send_after: int,
    validate_after: int,
    assimilate_after: int,
) -> list[Stall]:
    """Work units of the batch waiting longer than the given seconds for a daemon.

    One row per culprit that has work of this batch waiting: the transitioner (a
    ``transition_time`` long past), the app version (results unsent since long ago
    while the app has no live app version, so the scheduler can send none), the
    validator (``need_validate=1`` with a successful result reported long ago) and
    the assimilator (``assimilate_state=1`` since long ago). A daemon counts as
    stalled only if it also did nothing for the batch in that time, so a long queue
    that is moving is not reported. Times are the database server's, as the daemons
    write them.
    """
    rows = db.query(
        "SELECT 'transitioner', COUNT(*), COALESCE(UNIX_TIMESTAMP()-MIN(transition_time), 0) "
        "FROM workunit WHERE batch=%s AND transition_time < UNIX_TIMESTAMP()-%s "
        "AND NOT EXISTS (SELECT 1 FROM workunit t WHERE t.batch=%s "
        "AND t.transition_time >= UNIX_TIMESTAMP() AND t.mod_time > NOW() - INTERVAL %s SECOND) "
        "UNION ALL "
        "SELECT 'app version', COUNT(DISTINCT r.workunitid), "
        "COALESCE(UNIX_TIMESTAMP()-MIN(r.create_time), 0) "
        "FROM result r WHERE r.batch=%s AND r.server_state=%s "
        "AND r.create_time < UNIX_TIMESTAMP()-%s "
        "AND NOT EXISTS (SELECT 1 FROM app a JOIN app_version v ON v.appid=a.id "
        "WHERE a.id=r.appid AND a.deprecated=0 AND v.deprecated=0) "
        "UNION ALL "
        "SELECT 'validator', COUNT(DISTINCT w.id), "
        "COALESCE(UNIX_TIMESTAMP()-MIN(r.received_time), 0) "
        "FROM workunit w JOIN result r ON r.workunitid=w.id "
        "WHERE w.batch=%s AND w.need_validate=1 AND r.server_state=%s AND r.outcome=%s "
        "AND r.validate_state=0 AND r.received_time < UNIX_TIMESTAMP()-%s "
        "AND NOT EXISTS (SELECT 1 FROM result v WHERE v.batch=%s AND v.validate_state<>0 "
        "AND v.mod_time > NOW() - INTERVAL %s SECOND) "
        "UNION ALL "
        "SELECT 'assimilator', COUNT(*), "
        "COALESCE(UNIX_TIMESTAMP()-UNIX_TIMESTAMP(MIN(mod_time)), 0) "
        "FROM workunit WHERE batch=%s AND assimilate_state=1 "
        "AND mod_time < NOW() - INTERVAL %s SECOND "
        "AND NOT EXISTS (SELECT 1 FROM workunit a WHERE a.batch=%s AND a.assimilate_state=2 "
        "AND a.mod_time > NOW() - INTERVAL %s SECOND)",
        (
            batch_id,
            transition_after,
            batch_id,
            transition_after,
            batch_id,
            RESULT_UNSENT,
            send_after,
            batch_id,
            RESULT_OVER,
            OUTCOME_SUCCESS,
            validate_after,
            batch_id,
            validate_after,
            batch_id,
            assimilate_after,
            batch_id,
            assimilate_after,
        ),
        doing="looking for work units no daemon handles",
    )
    return [
        Stall(
            daemon=str(daemon.decode() if isinstance(daemon, bytes) else daemon),
            workunits=int(n),
            waited=int(waited),
        )
        for daemon, n, waited in rows
        if int(n)
    ]


def find_stall(db: Database, batch_id: int, thresholds: Thresholds) -> Stall | None:
    """The first daemon in the chain that leaves the batch's work waiting, or None.

    Later daemons wait on earlier ones, so the first one is the one to fix. Database
    errors are not fatal here: the diagnosis is a hint, and the caller's own queries
    report a lost database.
    """
    s = thresholds.seconds
    try:
        stalls = stalled(
            db,
            batch_id,
            transition_after=s["transitioner"],
            send_after=s["app version"],
            validate_after=s["validator"],
            assimilate_after=s["assimilator"],
        )
    except BoincExecutorError:
        return None
    order = list(_WAITS_FOR)
    stalls.sort(key=lambda st: order.index(st.daemon))
    return stalls[0] if stalls else None


def diagnose(db: Database, root: Path, batch_id: int, thresholds: Thresholds) -> str | None:
    """Why the batch is stuck, in words, or None when every waiting work unit is in time."""
    stall = find_stall(db, batch_id, thresholds)
    return describe(stall, root, thresholds) if stall is not None else None


class StuckWatch:
    """The backend's stuck-batch watch: rate-limited checks and one warning per episode.

    Checks at most every quarter of the shortest threshold (the answer changes on the
    scale of daemon sleep intervals, not of polls) unless asked to look now, and logs a
    warning when the batch gets stuck or another daemon becomes the culprit, not on
    every check.

    Args:
        root: the project root.
        logger: where the warning goes.
        min_interval: never check more often than this (the poll interval).
    """

    def __init__(self, root: Path, logger: logging.Logger, min_interval: float) -> None:
        self.root = root
        self.thresholds = Thresholds.for_project(root)
        self.reason: str | None = None
        self._daemon: str | None = None
        self._logger = logger
        self._every = max(min_interval, min(self.thresholds.seconds.values()) / 4)
        self._next = 0.0

    def due(self) -> bool:
        """Whether the next rate-limited check is due."""
        return time.monotonic() >= self._next

    def check(self, db: Database, batch_id: int) -> str | None:
        """Look now; returns the reason the batch is stuck, or None."""
        self._next = time.monotonic() + self._every
        stall = find_stall(db, batch_id, self.thresholds)
        reason = describe(stall, self.root, self.thresholds) if stall is not None else None
        daemon = stall.daemon if stall is not None else None
        if reason is not None and daemon != self._daemon:
            self._logger.warning("batch %s is stuck: %s", batch_id, reason)
        self.reason, self._daemon = reason, daemon
        return reason
