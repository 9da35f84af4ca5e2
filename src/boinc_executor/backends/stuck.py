"""Stuck batches explain themselves: which BOINC daemon is not doing its job, and how to check.

On a real project a daemon that does not run leaves no error anywhere (boinc-facts
§9.1): a validator that lost its lock leaves every result at validate_state 0, an
assimilator that exited leaves work units at assimilate_state 1, and the executor's
futures would wait forever. The database shows it, though. :func:`diagnose` asks it
(:meth:`Database.stalled`) for work of a batch that has waited longer than
:data:`FACTOR` sleep intervals of the daemon that should handle it (at least
:data:`MIN_SECONDS`, or ``$BOINC_EXECUTOR_STUCK_AFTER`` seconds), and words the answer
for a log warning, ``progress()`` and ``boinc-executor status``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BoincExecutorError, ConfigError
from ..server.entries import DaemonEntry, read_entries
from .db import Database
from .rows import Stall

__all__ = ["ENV_STUCK_AFTER", "FACTOR", "MIN_SECONDS", "Thresholds", "describe", "diagnose"]

ENV_STUCK_AFTER = "BOINC_EXECUTOR_STUCK_AFTER"
#: Sleep intervals a daemon may let work wait before the batch counts as stuck.
FACTOR = 5
#: Never report sooner than this: a busy daemon may take one long pass.
MIN_SECONDS = 60
_APP = "pyboinc"
_WAITS_FOR = {
    "transitioner": "were due for the transitioner",
    "validator": "were reported but not validated",
    "assimilator": "were validated (or failed) but not assimilated",
}


@dataclass(frozen=True)
class Thresholds:
    """Seconds after which waiting work counts as stuck, per daemon, and the daemons' commands.

    Attributes:
        seconds: per daemon name (transitioner, validator, assimilator).
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
            elif e.app == _APP and e.program.endswith("validator"):
                found.setdefault("validator", e)
            elif e.app == _APP and e.program.endswith("assimilator"):
                found.setdefault("assimilator", e)
        seconds = {}
        for daemon in _WAITS_FOR:
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
    cmd = thresholds.commands.get(daemon)
    who = f"the {daemon} (`{cmd}`)" if cmd else f"no {daemon} daemon in config.xml"
    return (
        f"{stall.workunits} work unit(s) {_WAITS_FOR[daemon]} for {stall.waited} s: "
        f"{who} is not doing its job. Check on the BOINC server with "
        f'`boinc-executor doctor {root}` and `bin/status -v` (its "locked" column)'
    )


def diagnose(db: Database, root: Path, batch_id: int, thresholds: Thresholds) -> str | None:
    """Why the batch is stuck, or None when every waiting work unit is within its time.

    Database errors are not fatal here: the diagnosis is a hint, and the caller's own
    queries report a lost database.
    """
    s = thresholds.seconds
    try:
        stalls = db.stalled(
            batch_id,
            transition_after=s["transitioner"],
            validate_after=s["validator"],
            assimilate_after=s["assimilator"],
        )
    except BoincExecutorError:
        return None
    # The first daemon in the chain that stalls is the one to fix; later ones wait on it.
    order = list(_WAITS_FOR)
    stalls.sort(key=lambda st: order.index(st.daemon))
    return describe(stalls[0], root, thresholds) if stalls else None
