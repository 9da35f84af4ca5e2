"""What ``bin/start`` makes of config.xml's ``<daemon>`` entries: hosts, lock, pid and log names.

BOINC's ``bin/start`` runs an entry only on the host its ``<host>`` (or the project's
``<host>``) names, and gives it three files (boinc-facts §5, §9.1):

* its log ``log_<host>/<output>``, or ``<basename of the command>.log``;
* its pid file ``pid_<host>/<pid_file>``, or ``<basename>.pid``;
* its lock ``pid_<host>/<lock_file>``, or ``<output>.lock``, or ``<basename>.lock``.

Two entries that end up with one lock file cannot both run: the second finds the lock
held and exits at once, while ``bin/status -v`` shows it "running" with the first one's
pid. Only the lock is trustworthy: a daemon is running exactly when its lock file is
locked, which is what ``bin/status -v``'s "locked" column shows and :func:`is_locked`
tests. This module only reads; setup-project and ``doctor`` act on what it finds.
"""

from __future__ import annotations

import os
import shlex
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "DaemonEntry",
    "collisions",
    "is_locked",
    "read_entries",
    "short_hostname",
]

#: Sleep intervals of BOINC's daemons when ``--sleep_interval`` is not given (seconds).
DEFAULT_SLEEP = {"transitioner": 5.0, "feeder": 5.0}
_DEFAULT_SLEEP_OTHER = 10.0


def short_hostname() -> str:
    """``hostname -s``: what a daemon's ``<host>`` must equal for bin/start to run it."""
    return socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class DaemonEntry:
    """One ``<daemon>`` of config.xml as bin/start sees it.

    Attributes:
        cmd: the ``<cmd>`` text (program and arguments).
        host: the entry's own ``<host>`` ("" when it has none).
        output: ``<output>`` ("" when absent).
        pid_file: ``<pid_file>`` ("" when absent).
        lock_file: ``<lock_file>`` ("" when absent).
        disabled: ``<disabled>`` is set to something other than 0.
    """

    cmd: str
    host: str = ""
    output: str = ""
    pid_file: str = ""
    lock_file: str = ""
    disabled: bool = False

    @property
    def argv(self) -> list[str]:
        """The command split as a shell would (empty when it cannot be split)."""
        try:
            return shlex.split(self.cmd)
        except ValueError:
            return []

    @property
    def program(self) -> str:
        """The basename of the command, which bin/start names files after by default."""
        argv = self.argv
        return Path(argv[0]).name if argv else ""

    @property
    def log_name(self) -> str:
        """The log file's name in ``log_<host>/``."""
        return self.output or f"{self.program}.log"

    @property
    def pid_name(self) -> str:
        """The pid file's name in ``pid_<host>/``."""
        return self.pid_file or f"{self.program}.pid"

    @property
    def lock_name(self) -> str:
        """The lock file's name in ``pid_<host>/`` (boinc-facts §9.1)."""
        if self.lock_file:
            return self.lock_file
        return f"{self.output or self.program}.lock"

    def option(self, name: str) -> str | None:
        """The value of ``--name`` (or ``-name``) on the command line, if given."""
        argv = self.argv
        for i, token in enumerate(argv[:-1]):
            if token in (f"--{name}", f"-{name}"):
                return argv[i + 1]
        return None

    @property
    def app(self) -> str | None:
        """The ``--app`` the daemon serves, if any."""
        return self.option("app")

    @property
    def sleep_interval(self) -> float:
        """Seconds the daemon sleeps between passes when it has nothing to do."""
        value = self.option("sleep_interval")
        try:
            return float(value) if value is not None else self._default_sleep()
        except ValueError:
            return self._default_sleep()

    def _default_sleep(self) -> float:
        return DEFAULT_SLEEP.get(self.program, _DEFAULT_SLEEP_OTHER)

    def runs_on(self, project_host: str) -> str:
        """The host bin/start runs this entry on."""
        return self.host or project_host

    def describe(self) -> str:
        """A short name for messages: the command line."""
        return " ".join(self.argv) or self.cmd


def read_entries(root: Path) -> tuple[str, list[DaemonEntry]]:
    """config.xml's ``<host>`` and its ``<daemon>`` entries, in file order.

    Raises:
        ConfigError: config.xml is missing or not XML.
    """
    path = root / "config.xml"
    try:
        doc = ET.parse(path).getroot()  # noqa: S314 - the operator's own project file
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return _project_host(doc), entries_of(doc)


def entries_of(doc: ET.Element) -> list[DaemonEntry]:
    """The ``<daemon>`` entries of a parsed config.xml."""

    def text(el: ET.Element, tag: str) -> str:
        return (el.findtext(tag) or "").strip()

    return [
        DaemonEntry(
            cmd=text(d, "cmd"),
            host=text(d, "host"),
            output=text(d, "output"),
            pid_file=text(d, "pid_file"),
            lock_file=text(d, "lock_file"),
            disabled=text(d, "disabled") not in ("", "0"),
        )
        for d in doc.iterfind("daemons/daemon")
    ]


def _project_host(doc: ET.Element) -> str:
    return (doc.findtext("config/host") or "").strip()


def collisions(
    entries: Iterable[DaemonEntry], project_host: str
) -> list[tuple[str, str, DaemonEntry, DaemonEntry]]:
    """Pairs of enabled entries on one host that share a lock, pid or log file.

    Returns ``(kind, file name, first, second)``; ``second`` is the one that loses (for
    a lock it never runs; for a pid or log file the two overwrite each other's).
    """
    seen: dict[tuple[str, str, str], DaemonEntry] = {}
    found: list[tuple[str, str, DaemonEntry, DaemonEntry]] = []
    for entry in entries:
        if entry.disabled or not entry.program:
            continue
        host = entry.runs_on(project_host)
        for kind, name in (
            ("lock", entry.lock_name),
            ("pid", entry.pid_name),
            ("log", entry.log_name),
        ):
            first = seen.setdefault((host, kind, name), entry)
            if first is not entry:
                found.append((kind, name, first, entry))
    return found


def is_locked(path: Path) -> bool:
    """Whether another process holds a lock on ``path`` (bin/status -v's "locked").

    Uses ``lockf(F_TEST)``, which only looks: unlike taking the lock and dropping it,
    it cannot make a daemon starting at this moment fail.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.lockf(fd, os.F_TEST, 0)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
