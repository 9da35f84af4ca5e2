"""TEST STAND-IN for BOINC's ``bin/start``, ``bin/stop`` and ``bin/status``. Not product code.

Models what sched/start does to daemons (facts §5, §9), because that is what bites:

* only enabled ``<daemon>`` entries whose ``<host>`` (or the project's) is ``hostname -s`` run;
* each gets ``log_<host>/<output or program.log>``, ``pid_<host>/<pid_file or program.pid>``
  and the lock ``pid_<host>/<lock_file, else output.lock, else program.lock>``;
* ``start`` (and ``start --cron``) launches every entry whose lock is free, as a real
  process (``daemon_proc.py``) with cwd ``tmp_<host>`` that passes on every inherited
  file descriptor (§9.4); a second daemon that finds its lock held exits at once
  without writing the pid file, so ``status -v`` shows it "running" with the first
  one's pid (§9.1);
* ``stop`` sends SIGHUP to the pids in the pid files and neither waits nor removes the
  pid files (§9.2): the daemons quit at their next loop, a little later;
* ``status -v`` prints the daemon table with a "running" column (the pid file's pid is
  alive) and a "locked" column (the lock file is locked), the only trustworthy one.

Deviation: the real ``start`` sleeps 5 s; this one waits until each daemon it launched
has taken its lock or exited before it launches the next, which is what the sleep is
for. The work of the daemons is done by ``VolunteerHost.step()``, which runs an entry
only while its process holds the entry's lock (see ``running_daemons``) once ``start``
has been run in the project.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .common import Config, Daemon, read_config

REPO_ROOT = Path(__file__).resolve().parents[2]
_START_WAIT = 3.0


def local_host() -> str:
    return socket.gethostname().split(".")[0]


def our_daemons(config: Config) -> list[Daemon]:
    """Enabled entries bin/start runs on this machine, in config.xml order."""
    return [d for d in config.daemons
            if not d.disabled and d.program and (d.host or config.host) == local_host()]


def lock_held(path: Path) -> bool:
    """Whether some process holds a lockf() lock on ``path`` (only looks)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.lockf(fd, os.F_TEST, 0)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def lock_owner(path: Path) -> tuple[int, str] | None:
    """``(pid, cmd)`` a daemon wrote into the lock it holds, or None if nobody holds it."""
    if not lock_held(path):
        return None
    try:
        pid_text, _, cmd = path.read_text().partition("\n")
        return int(pid_text), cmd.rstrip("\n")
    except (OSError, ValueError):
        return None


def ever_started(config: Config) -> bool:
    """bin/start has run in this project (it leaves lock files in pid_<host>)."""
    return config.pid_dir.is_dir() and any(config.pid_dir.glob("*.lock"))


def running_daemons(config: Config) -> list[Daemon]:
    """The entries whose daemon is doing its job right now.

    Before anyone ran bin/start (most tests), the project behaves as if bin/start had
    started every entry once: of entries sharing a lock, only the first runs. After
    that, an entry runs exactly while a process started for it holds its lock.
    """
    entries = our_daemons(config)
    if not ever_started(config):
        winners: dict[str, Daemon] = {}
        for d in entries:
            winners.setdefault(d.lock_name, d)
        return [d for d in entries if winners[d.lock_name] is d]
    running = []
    for d in entries:
        owner = lock_owner(config.pid_dir / d.lock_name)
        if owner is not None and owner[1] == d.cmd:
            running.append(d)
    return running


def exit_daemon(config: Config, program: str) -> None:
    """A running daemon of ``program`` hit an error the real one exits on: end its process."""
    if not ever_started(config):
        return
    for d in running_daemons(config):
        owner = lock_owner(config.pid_dir / d.lock_name)
        if d.program == program and owner is not None:
            os.kill(owner[0], signal.SIGTERM)
            deadline = time.monotonic() + _START_WAIT
            while lock_held(config.pid_dir / d.lock_name) and time.monotonic() < deadline:
                time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def start(config: Config, *, cron: bool) -> int:
    config.pid_dir.mkdir(exist_ok=True)
    config.log_dir.mkdir(exist_ok=True)
    config.tmp_dir.mkdir(exist_ok=True)
    for d in our_daemons(config):
        lock = config.pid_dir / d.lock_name
        if lock_held(lock):
            if not cron:
                print(f"  {d.program} already running")
            continue
        log = (config.log_dir / d.log_name).open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.boinc_harness.daemon_proc", str(lock),
             str(config.pid_dir / d.pid_name), d.cmd],
            cwd=config.tmp_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            close_fds=False, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        log.close()
        print(f"  Starting daemon: {d.cmd}")
        # One at a time, as the real start's fork()s come out: the first entry of a
        # shared lock is the one that gets it.
        deadline = time.monotonic() + _START_WAIT
        while proc.poll() is None and time.monotonic() < deadline:
            owner = lock_owner(lock)
            if owner is not None and owner[0] == proc.pid:
                break
            time.sleep(0.02)
    return 0


def stop(config: Config) -> int:
    for d in our_daemons(config):
        pid = _read_pid(config.pid_dir / d.pid_name)
        if pid is not None and _pid_alive(pid):
            print(f"  Stopping daemon: {d.cmd} (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
    return 0


def status(config: Config, verbose: bool) -> int:
    if not verbose:
        print("BOINC is ENABLED")
        return 0
    print("BOINC is ENABLED")
    print(f"{'DAEMON':<4} {'pid':>7}  {'status':<12} {'lock file':<11} {'disabled':<9} commandline")
    for i, d in enumerate(our_daemons(config), start=1):
        pid = _read_pid(config.pid_dir / d.pid_name)
        running = "running" if pid is not None and _pid_alive(pid) else "not running"
        locked = "locked" if lock_held(config.pid_dir / d.lock_name) else "UNLOCKED"
        print(f"{i:<4} {pid or '':>7}  {running:<12} {locked:<11} {'no':<9} {d.cmd}")
    return 0


def main(argv: list[str]) -> int:
    tool = Path(argv[0]).name
    root = Path(argv[0]).resolve().parents[1]
    config = read_config(root)
    if tool == "start":
        return start(config, cron="--cron" in argv[1:])
    if tool == "stop":
        return stop(config)
    if tool == "status":
        return status(config, verbose="-v" in argv[1:])
    print(f"{tool}: unknown stand-in", file=sys.stderr)
    return 2
