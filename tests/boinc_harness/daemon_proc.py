"""TEST STAND-IN for one BOINC daemon process started by bin/start. Not product code.

``python -m tests.boinc_harness.daemon_proc LOCK PID_FILE CMD``: takes a lockf() lock on
LOCK, or logs that another instance holds it and exits 1 at once (facts §9.1). Holding
the lock it writes ``<pid>\\n<cmd>`` into it (so the harness knows which entry it runs
for) and its pid into PID_FILE, then loops until SIGHUP or SIGTERM and quits at the next
loop, a little later (facts §9.2; ``$BOINC_HARNESS_EXIT_DELAY`` seconds, default 0.2).
The daemon's actual work is done by ``VolunteerHost.step()`` for the entries whose
process holds their lock.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time

_LOOP = 0.1


def main(argv: list[str]) -> int:
    lock_path, pid_path, cmd = argv[1], argv[2], argv[3]
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"{time.strftime('%d-%b-%Y %H:%M:%S')} Another copy of {cmd.split()[0]} is "
              f"already running", flush=True)
        return 1
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{cmd}\n".encode())
    with open(pid_path, "w") as pid_file:
        pid_file.write(f"{os.getpid()}\n")
    asked: list[int] = []
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: asked.append(signum))
    print(f"{time.strftime('%d-%b-%Y %H:%M:%S')} Starting {cmd}", flush=True)
    while not asked:
        if not os.path.exists(lock_path):
            return 0  # the test's project directory is gone
        time.sleep(_LOOP)
    # The real daemons notice the signal at their next loop (within 0.2 s on the lab's).
    time.sleep(float(os.environ.get("BOINC_HARNESS_EXIT_DELAY", "0.2")))
    print(f"{time.strftime('%d-%b-%Y %H:%M:%S')} Exiting on signal {asked[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
