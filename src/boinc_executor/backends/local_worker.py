"""A worker process of the embedded backend: it plays one BOINC client with one slot.

Run as ``python -m boinc_executor.backends.local_worker BATCH_DIR SLOT MASTER_PID``
by :class:`~boinc_executor.backends.local.LocalBackend`. It reads job lines on
stdin and reports on the stdout it was given::

    master ──"J job program pack offset size attempt"──▶ worker   run this job
           ──"X job"──────────────────────────────────▶ worker   give it back if not started
           ──"R record record ..."────────────────────▶ worker   reuse these handled records
    worker ──"W job"───────────────────────────────────▶ master   given back: deal it elsewhere
           ──"D job record-name"───────────────────────▶ master   record delivered into new/
           ──"F job message"───────────────────────────▶ master   no record could be written

Jobs run in the order they were dealt, and starting one is not reported: the
master knows the first job it dealt and has no report for is the one running.

Steady state, the slot's files are rewritten in place and nothing is created or
deleted per job but the record itself (``local_slot.py`` says how).

A worker never outlives its master: on Linux the kernel kills it when the
thread that started it ends (``PR_SET_PDEATHSIG``; the master starts each
worker from the thread that reads it, which lives exactly as long), and on
every platform it checks that its parent is still the master before it
delivers, so an orphan never writes a record. Slot names carry the master's
run, so an orphan and a new master's worker never share a slot, and record
tags carry the slot, so two deliveries never share a record name.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import select
import signal
import sys
import threading
from collections import deque
from pathlib import Path
from types import FrameType

from .. import protocol
from ..protocol.inputpack import PackReader, check_pack_name
from .local_slot import Slot

__all__ = [
    "STDOUT_FD_ENV",
    "explain_os_error",
    "record_tag",
    "slot_of_tag",
]

STDOUT_FD_ENV = "BOINC_EXECUTOR_STDOUT_FD"  # the master's stdout, as the worker inherits it

_PR_SET_PDEATHSIG = 1


def record_tag(slot: str, attempt: int) -> str:
    """The tag of a record a worker in ``slot`` delivers for an attempt."""
    return f"local-{slot}-{attempt}"


def slot_of_tag(tag: str) -> str | None:
    """The slot in a :func:`record_tag`; None for a tag no worker wrote."""
    if not tag.startswith("local-"):
        return None
    slot, _, attempt = tag[len("local-") :].rpartition("-")
    return slot if slot and attempt.isdigit() else None


def _die_with_master(master_pid: int) -> None:
    """Ask the kernel to kill this process with its master; exit if it is gone already."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the parent check before each delivery still holds
    if os.getppid() != master_pid:
        os._exit(0)  # the master died before the request took effect


class _Worker:
    """Reads job lines, runs them in the slot, reports.

    One thread does it all, so taking the next job and giving a queued one
    back (``W``) never race: a job is either given back or run, never both.
    A withdrawal is read between jobs, and also during a long one: the master
    follows its ``X`` line with :data:`WITHDRAW_SIGNAL`, whose handler reads
    the pipe while the job's own code runs.
    """

    def __init__(self, batch_dir: str, slot: str, master_pid: int, report: int) -> None:
        self._slot = Slot(batch_dir, slot)
        self._batch = Path(batch_dir)  # for the rare error record only
        self._packs = PackReader(os.path.join(batch_dir, "local"))
        self._master_pid = master_pid
        self._report = report
        self._queue: deque[list[str]] = deque()
        self._buffer = b""
        self._eof = False
        # True only while the job's code runs: the one time the handler may read
        # (elsewhere this thread is in the middle of reading or reporting itself).
        self._in_job = False
        # A withdrawal signal came when the pipe could not be read: read it as soon
        # as it can (see _answer_signals).
        self._signalled = False

    def _read(self, block: bool) -> None:
        """Read what the master sent; without ``block`` only what is already there."""
        if not block and (os.name == "nt" or not select.select([0], [], [], 0)[0]):
            return  # (no select() on Windows pipes: withdrawals wait for the next read)
        chunk = os.read(0, 1 << 16)
        if not chunk:
            self._eof = True
            return
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        for raw in lines:
            fields = raw.decode().split("\t")
            if fields[0] == "J":
                self._queue.append(fields)
            elif fields[0] == "X":
                self._withdraw(fields[1])
            elif fields[0] == "R":
                self._slot.lend(fields[1:])

    @staticmethod
    def _work_within(seconds: float) -> bool:
        """Whether the master sends something within ``seconds`` (False at once on Windows)."""
        return os.name != "nt" and bool(select.select([0], [], [], seconds)[0])

    def on_withdraw_signal(self, _signum: int, _frame: FrameType | None) -> None:
        """:data:`WITHDRAW_SIGNAL`: answer a withdrawal now if a job's code runs."""
        self._signalled = True
        if self._in_job:
            self._answer_signals()

    def _answer_signals(self) -> None:
        """Read the pipe until no signal is left unanswered (called while a job's code runs).

        A signal is never lost: one that comes while the pipe is being read
        (the handler runs again inside the handler, between two of its steps) or
        while the next job is being laid out only marks itself, and is answered
        by the loop here, or once the job's code starts. (Dropped, it left the
        master's ``X`` unread until the long job ended: the master asks for one
        job at a time, so no other job moved either.)
        """
        while self._signalled:
            self._signalled = False
            self._in_job = False  # a nested signal only marks itself
            try:
                self._read(block=False)
            finally:
                self._in_job = True

    def _withdraw(self, job: str) -> None:
        """Give a queued job back (``W``), so the master can deal it to another worker.

        A job this worker has already started, or finished, is not given back:
        its ``D`` report reaches the master instead, which then lets it run
        here. Only this answer makes a withdrawal safe; the master's view of
        what has started always lags behind, and dealing on it alone would run
        a job on two workers.
        """
        kept = deque(f for f in self._queue if f[1] != job)
        if len(kept) < len(self._queue):
            self._queue = kept
            self._say(f"W {job}\n")

    def _say(self, line: str) -> None:
        view = memoryview(line.encode())
        while view:  # one write in practice: a line under PIPE_BUF goes whole
            view = view[os.write(self._report, view) :]

    def run(self) -> None:
        """Run jobs until the master closes stdin (or ^C: then finish the current one only)."""
        from ..volunteer.runner import execute

        while not _INTERRUPTED.is_set():
            if not self._queue and self._slot.lent_in_new and not self._work_within(_IDLE):
                self._slot.stash_spares()
            self._read(block=not self._queue)  # a withdrawal of the next job may be waiting
            if not self._queue:
                if self._eof:
                    return
                continue
            _, job, program, pack, offset, size, attempt_text = self._queue.popleft()
            attempt = int(attempt_text)
            reason = ""
            record = b""
            try:
                data = self._input(pack, int(offset), int(size))
                self._slot.lay_out(job, program, data, attempt)
            except (OSError, protocol.ProtocolError) as exc:
                reason = f"the local worker could not lay out job {job}: {explain_os_error(exc)}"
            else:
                self._in_job = True
                try:
                    self._answer_signals()  # any that came while the job was laid out
                    record = execute(self._slot.program_bytes, data, functools.partial(str, job))
                finally:
                    self._in_job = False
                try:
                    self._slot.write_output(record)
                except OSError as exc:
                    why = explain_os_error(exc)
                    reason = f"the runner could not write the result of job {job}: {why}"
            self._deliver(job, attempt, record, reason)
            self._slot.take_spare()

    def _input(self, pack: str, offset: int, size: int) -> bytes:
        if offset >= 0:
            return self._packs.read(pack, offset, size)
        # A batch journaled by an older release: one data file per job in download/.
        path = os.path.join(self._slot.download, check_pack_name(pack))
        return protocol.read_bounded(Path(path), 2**31)

    def _deliver(self, job: str, attempt: int, record: bytes, failure: str) -> None:
        """Move the record into ``new/`` and say so; with ``failure``, deliver an error record."""
        if os.getppid() != self._master_pid:
            os._exit(0)  # orphaned: this job is no longer ours to report
        tag = record_tag(self._slot.name, attempt)
        name = protocol.record_file_name(job, tag)
        try:
            if not failure:
                self._slot.deliver(name, record)
                self._say(f"D {job} {name}\n")
                return
            self._slot.discard_output()
            info = protocol.failure_info("JobFailedError", failure, exit_status=1)
            info["host"] = protocol.host_name()
            record = protocol.encode_error_record(job, info, source="local")
            protocol.deliver_record(self._batch, job, tag, record)
        except OSError as exc:
            self._say(f"F {job} {' '.join(str(exc).split())}\n")
            return
        self._say(f"D {job} {name}\n")


def explain_os_error(exc: BaseException) -> str:
    """An OS error as a message; a full disk also says what to do (worker and master alike)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (
            f"{exc}. The disk is full: free space, then run the script again or "
            "BoincExecutor.resume() to run the job again"
        )
    return str(exc)


#: how long a worker with nothing to run waits for a job before it stashes its spares
_IDLE = 0.05

_INTERRUPTED = threading.Event()  # set by SIGINT: run no further queued job

#: Sent by the master after an ``X`` line, so a worker busy with a long job
#: answers it at once. SIGURG, because its default action is to do nothing: one
#: that reaches a worker before its handler is installed is simply lost (the
#: line is read at the next job), and a job's code is not likely to use it.
#: None where there is no such signal (Windows).
WITHDRAW_SIGNAL: signal.Signals | None = getattr(signal, "SIGURG", None)


def main(argv: list[str]) -> int:
    """Entry point: ``BATCH_DIR SLOT MASTER_PID``."""
    batch_dir, slot, master_pid = argv[0], argv[1], int(argv[2])
    _die_with_master(master_pid)
    # A ^C in the terminal reaches the whole process group. The job running now
    # finishes and reports (no finished work is lost); the jobs queued after it are
    # skipped, and the master's next run submits them again.
    signal.signal(signal.SIGINT, lambda _signum, _frame: _INTERRUPTED.set())
    extra = os.environ.get("BOINC_EXECUTOR_SYS_PATH")
    if extra:
        sys.path[:] = [p for p in json.loads(extra) if isinstance(p, str)]
    # The protocol owns the original stdout; user output goes to the master's stdout
    # (handed over under another fd), or to stderr when the master has none.
    report = os.dup(1)
    user_out = os.environ.pop(STDOUT_FD_ENV, "")
    if user_out.isdigit():
        os.dup2(int(user_out), 1)
        os.close(int(user_out))
    else:
        os.dup2(2, 1)
    worker = _Worker(batch_dir, slot, master_pid, report)
    if WITHDRAW_SIGNAL is not None:
        signal.signal(WITHDRAW_SIGNAL, worker.on_withdraw_signal)
        # The job's own system calls restart rather than fail with EINTR; the
        # handler then runs once the job's code is back in Python.
        signal.siginterrupt(WITHDRAW_SIGNAL, False)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
