"""``boinc-executor restart-daemons PROJECT_DIR``: restart BOINC's daemons without the race.

``bin/stop && bin/start`` races on BOINC 1.6.2 (boinc-facts §9.2): bin/stop only sends
SIGHUP and returns, the daemons quit at their next loop, and a bin/start in between
finds their locks held, starts nothing, and then the old daemons are gone too. So this
runs bin/stop, waits until no daemon of this host holds its lock any more, runs
bin/start, and then checks the lock of every daemon, the only trustworthy sign that it
runs. bin/start passes every inherited file descriptor above 2 to the daemons (§9.4),
so it runs with none: a caller's pipe would otherwise stay open for the daemons' life.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from .entries import DaemonEntry, is_locked, read_entries, short_hostname
from .tools import run_tool

__all__ = ["main", "restart_advice", "restart_daemons"]

_TOOL_TIMEOUT = 120.0
_POLL = 0.1


def restart_advice(root: Path) -> str:
    """How to restart the daemons without the ``bin/stop && bin/start`` race (facts §9.2, §9.3)."""
    return (
        f"restart the project's daemons to run the new entries: boinc-executor "
        f"restart-daemons {root}. By hand, not `bin/stop && bin/start` (bin/stop does not "
        f"wait, and a bin/start racing the exiting daemons starts nothing): cd {root} && "
        "bin/stop; wait until `bin/status -v` shows no daemon locked; bin/start; then check "
        'that every daemon is locked in `bin/status -v` (the "running" column trusts stale '
        f"pid files) or run boinc-executor doctor {root}. Afterwards run `boinccmd --project "
        "URL update` on test clients: one that contacted the project while it was stopped "
        "was told to come back in an hour"
    )


def _locked(pid_dir: Path, entries: list[DaemonEntry]) -> list[DaemonEntry]:
    return [e for e in entries if is_locked(pid_dir / e.lock_name)]


def restart_daemons(
    project_dir: str | Path,
    *,
    stop_timeout: float = 60.0,
    settle: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Stop the project's daemons, wait until they are gone, start them, check their locks.

    Args:
        project_dir: the project root.
        stop_timeout: seconds to wait for the old daemons to release their locks.
        settle: seconds to wait after bin/start before checking the locks (a daemon
            that exits at once on a bad entry has then released its lock).
        log: called with a line per step.

    Returns:
        The commands of the daemons that are not running afterwards (empty when all are).

    Raises:
        ConfigError: a project tool failed, or old daemons outlived ``stop_timeout``.
    """
    say = log or (lambda _line: None)
    root = Path(project_dir).expanduser().resolve()
    project_host, entries = read_entries(root)
    host = short_hostname()
    here = [e for e in entries if not e.disabled and e.program and e.runs_on(project_host) == host]
    pid_dir = root / f"pid_{host}"
    say("bin/stop")
    run_tool(root, "stop", timeout=_TOOL_TIMEOUT)
    deadline = time.monotonic() + stop_timeout
    while left := _locked(pid_dir, here):
        if time.monotonic() > deadline:
            raise ConfigError(
                f"{len(left)} daemon(s) still hold their locks {stop_timeout:.0f} s after "
                f"bin/stop (e.g. `{left[0].describe()}`); find them with `bin/status -v` and "
                "stop them, then run restart-daemons again"
            )
        time.sleep(_POLL)
    say("bin/start")
    run_tool(root, "start", timeout=_TOOL_TIMEOUT)
    time.sleep(settle)
    return [e.describe() for e in here if not is_locked(pid_dir / e.lock_name)]


def main(project_dir: str) -> int:
    """The ``restart-daemons`` command: 0 when every daemon runs afterwards, else 1."""
    try:
        not_running = restart_daemons(project_dir, log=lambda step: print(f"running {step}"))
    except ConfigError as exc:
        print(f"boinc-executor restart-daemons: {exc}", file=sys.stderr)
        return 1
    for cmd in not_running:
        print(f"NOT RUNNING (its lock is free): {cmd}")
    print(
        "Test clients that contacted the project while it was stopped wait an hour: run "
        "`boinccmd --project URL update` on them."
    )
    if not_running:
        print(f"Find out why with: boinc-executor doctor {project_dir}")
        return 1
    print("Every daemon holds its lock.")
    return 0
