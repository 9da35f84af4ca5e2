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

Steady state, per job, nothing is created or deleted but the record itself:

* the data file is read out of the input pack with one ``pread`` and written into
  the slot's ``data.pkl`` in place (pwrite + ftruncate through a descriptor kept
  open), as is ``init_data.xml``; ``boinc_finish_called`` stays, reset in place to
  two NUL bytes, and ``0\\n`` is written over them when the job has finished (files
  only shrink by truncation, never to zero: freeing and re-allocating a block
  per job costs 50 times a same-size rewrite on ext4);
* ``program.pkl`` is a hard link to the download area's program file and stays
  linked while the job's program is the same; its bytes are read once then;
* the runner's :func:`~boinc_executor.volunteer.runner.execute` runs the job on
  the bytes just laid out, so an input is read once (out of the pack), not a
  second time out of the slot; its record is written as ``result.pkl`` (over a
  handled record's file, or created), and the worker renames that file into
  ``BATCH_DIR/new/<job>.local-<slot>-<attempt>.result``: the one file per job
  the protocol needs, since results are learned only from records in ``new/``.

The worker is the runner's host here, as the BOINC client is on a volunteer's
machine, and it plays the runner's slot I/O (``volunteer/slotio.py``) with the
descriptors it keeps: between two jobs every system call counts, since on a
busy core each one runs with cold caches (ten fewer calls per job made a
10 ms task's throughput about 1% higher).

A worker never outlives its master: on Linux the kernel kills it when the
thread that started it ends (``PR_SET_PDEATHSIG``; the master starts each
worker from the thread that reads it, which lives exactly as long), and on
every platform it checks that its parent is still the master before it
delivers, so an orphan never writes a record. Slot names carry the master's
run, so an orphan and a new master's worker never share a slot, and record
tags carry the slot, so two deliveries never share a record name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import select
import shutil
import signal
import stat
import sys
import threading
from collections import deque
from pathlib import Path
from types import FrameType

from .. import protocol
from ..protocol.fileio import rewrite_fd
from ..protocol.inputpack import PackReader, check_pack_name
from ..volunteer.slotio import read_program

__all__ = [
    "MAX_SPARES",
    "SPARE_DIR",
    "STDOUT_FD_ENV",
    "explain_os_error",
    "record_tag",
    "slot_of_tag",
]

STDOUT_FD_ENV = "BOINC_EXECUTOR_STDOUT_FD"  # the master's stdout, as the worker inherits it

_PR_SET_PDEATHSIG = 1
_NOT_FINISHED = b"\0\0"  # boinc_finish_called before the job has finished
_FINISHED = b"0\n"  # what boinc_finish_called holds once it has (the BOINC API writes it)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_SLOT_FILE_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
# A spare is opened without blocking, so a FIFO planted under a lent name cannot stall.
_SPARE_FLAGS = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC


#: under ``local/``: each slot's lent records while its worker is idle
SPARE_DIR = "spare"
#: handled records lent to a worker for reuse at most; it deletes further ones
MAX_SPARES = 256
# Larger records are deleted, not reused: creating their file costs little next to
# writing them, and this bounds the disk spares take (MAX_SPARES x 1 MiB per worker).
MAX_SPARE_BYTES = 1 << 20


def record_tag(slot: str, attempt: int) -> str:
    """The tag of a record a worker in ``slot`` delivers for an attempt."""
    return f"local-{slot}-{attempt}"


def slot_of_tag(tag: str) -> str | None:
    """The slot in a :func:`record_tag`; None for a tag no worker wrote."""
    if not tag.startswith("local-"):
        return None
    slot, _, attempt = tag[len("local-") :].rpartition("-")
    return slot if slot and attempt.isdigit() else None


def _reusable(path: str) -> tuple[int, int] | None:
    """``path`` opened for writing, with its size, if it is a lone regular file of <= 1 MiB."""
    try:
        fd = os.open(path, _SPARE_FLAGS)
    except OSError:
        return None  # a symlink (O_NOFOLLOW), a directory, gone
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or not (
        stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size <= MAX_SPARE_BYTES
    ):
        os.close(fd)
        return None
    return fd, st.st_size


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


class _Slot:
    """One slot directory whose files are kept open and rewritten in place."""

    def __init__(self, batch_dir: str, name: str) -> None:
        local = os.path.join(batch_dir, "local")
        self.name = name
        self.path = os.path.join(local, "slots", name)
        self.download = os.path.join(local, "download")
        self.new = os.path.join(batch_dir, protocol.NEW)
        os.makedirs(self.path, exist_ok=True)
        # Names in new/ of handled records the master lent back (R), newest last,
        # and those moved to this slot's spare directory while the worker was idle.
        self._spares: deque[str] = deque()
        self.spare_dir = os.path.join(local, SPARE_DIR, name)
        self._stashed: deque[str] = deque()
        self.result = os.path.join(self.path, protocol.OPEN_RESULT)
        self._remove_result()  # left by a worker that died mid-job in this slot
        # A spare moved to result.pkl for the next job: its descriptor and size.
        self._spare_in_place: tuple[int, int] | None = None
        self._output: tuple[int, int] | None = None  # the same, once the job's
        self._sizes: dict[int, int] = {}  # fd -> the size this worker last gave the file
        self._data = self._open(protocol.OPEN_DATA)
        self._init = self._open("init_data.xml")
        self._finish = self._open(protocol.FINISH_FILE)
        self._program = ""
        self.program_bytes = b""  # the linked program file's bytes, read once per program
        self.project_dir = local

    def _open(self, name: str) -> int:
        fd = os.open(os.path.join(self.path, name), _SLOT_FILE_FLAGS, 0o666)
        self._sizes[fd] = os.fstat(fd).st_size
        return fd

    def _remove_result(self) -> None:
        try:
            os.unlink(self.result)
        except FileNotFoundError:
            pass
        except IsADirectoryError:  # a directory planted in new/ under a lent name
            shutil.rmtree(self.result, ignore_errors=True)

    def _rewrite(self, fd: int, data: bytes) -> None:
        """Make ``data`` the file's content, in place (see ``rewrite_fd``).

        Sizes are tracked here (this worker is the files' only writer), which
        spares an fstat per file and job.
        """
        rewrite_fd(fd, data, self._sizes.get(fd, 0))
        self._sizes[fd] = len(data)

    def lend(self, names: list[str]) -> None:
        """The master lent these handled records back: their files are this worker's.

        They are packed and synced, so their files in ``new/`` may be reused or
        deleted. While jobs keep coming they stay in ``new/`` (the master's
        scans leave lent records alone) until a job needs an output file: one
        rename then moves a file straight to ``result.pkl``, so a record's file
        costs two renames per job, into ``new/`` and back, and the master no
        file operation. (Through a spare directory it took three, and the
        worker's CPU per trivial job was about a tenth higher.) Beyond
        :data:`MAX_SPARES`, the oldest are deleted.
        """
        spares = self._spares
        # Only ever a record name: nothing outside new/ is touched.
        spares.extend(n for n in names if protocol.parse_record_name(n) is not None)
        while len(spares) > MAX_SPARES:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.new, spares.popleft()))

    def take_spare(self) -> None:
        """Move a lent record's file to ``result.pkl`` for the next job, if none is there.

        The record is then written over an existing file in place (truncating
        what is left of the old one) instead of into a new file per job: on ext4
        a creation costs up to 30x a rewrite. Only a lone regular file of at
        most 1 MiB is kept; anything else is removed from the slot once moved
        there (so a file with a second hard link is never written through). The
        worker calls this as soon as a job's output has left the slot, so that
        the rename is done while it waits for the next job, not on that job's way.
        """
        while self._spare_in_place is None and (self._spares or self._stashed):
            if self._spares:
                path = os.path.join(self.new, self._spares.pop())
            else:
                path = os.path.join(self.spare_dir, self._stashed.pop())
            try:
                os.rename(path, self.result)
            except FileNotFoundError:
                continue  # dropped meanwhile
            except OSError:
                return  # the output is created as usual
            self._spare_in_place = _reusable(self.result)
            if self._spare_in_place is None:
                self._remove_result()

    @property
    def lent_in_new(self) -> bool:
        """Whether lent records this worker has not reused wait in ``new/``."""
        return bool(self._spares)

    def stash_spares(self) -> None:
        """Move the lent records waiting in ``new/`` to the slot's spare directory.

        Called when the worker has had nothing to do for a moment, so that an
        idle executor's ``new/`` holds only records still to be handled, and the
        next burst of jobs still finds files to reuse. A lone regular file of at
        most 1 MiB is kept, up to :data:`MAX_SPARES`; anything else is deleted.
        """
        os.makedirs(self.spare_dir, exist_ok=True)
        while self._spares:
            name = self._spares.popleft()
            path = os.path.join(self.new, name)
            try:
                st = os.lstat(path)
                if (
                    stat.S_ISREG(st.st_mode)
                    and st.st_nlink == 1
                    and st.st_size <= MAX_SPARE_BYTES
                    and len(self._stashed) < MAX_SPARES
                ):
                    os.rename(path, os.path.join(self.spare_dir, name))
                    self._stashed.append(name)
                else:
                    os.unlink(path)
            except OSError:
                continue  # gone already; or not removable, and then a scan deals with it

    def lay_out(self, job: str, program: str, data: bytes, attempt: int) -> None:
        """Lay a job out as the BOINC client does in ``<copy_file/>`` mode (boinc-facts §6)."""
        self.take_spare()
        self._output, self._spare_in_place = self._spare_in_place, None  # the job's now
        if program != self._program:
            target = os.path.join(self.path, protocol.OPEN_PROGRAM)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            # A hard link is a real copy for every purpose the runner has, without the bytes.
            source = os.path.join(self.download, program)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            self.program_bytes = read_program(self.path)
            self._program = program
        self._rewrite(self._data, data)
        self._rewrite(
            self._init,
            (
                f"<app_init_data>\n<wu_name>{job}</wu_name>\n"
                f"<result_name>{job}_{attempt}</result_name>\n<slot>{self.name}</slot>\n"
                f"<project_dir>{self.project_dir}</project_dir>\n</app_init_data>\n"
            ).encode(),
        )
        # Not finished yet: two NUL bytes where the runner writes "0\n" at the end,
        # rewritten in place (the file is never emptied, see _rewrite).
        self._rewrite(self._finish, _NOT_FINISHED)

    def write_output(self, record: bytes) -> None:
        """Write the job's record as ``result.pkl``, then mark it finished.

        What the runner's ``write_result`` does on a volunteer's host, in place
        over the spare laid there (or a new file), and through the descriptor
        of ``boinc_finish_called`` kept open.
        """
        output, self._output = self._output, None
        fd, size = output if output is not None else (os.open(self.result, _OUTPUT_FLAGS, 0o666), 0)
        try:
            rewrite_fd(fd, record, size)
        finally:
            os.close(fd)
        self._rewrite(self._finish, _FINISHED)

    def deliver(self, record_name: str) -> None:
        """Move the runner's output into ``new/``, as the assimilator would."""
        os.rename(self.result, os.path.join(self.new, record_name))

    def discard_output(self) -> None:
        """Drop a partial or unusable output, so the next job starts without one."""
        if self._output is not None:
            os.close(self._output[0])
            self._output = None
        self._remove_result()


class _Worker:
    """Reads job lines, runs them in the slot, reports.

    One thread does it all, so taking the next job and giving a queued one
    back (``W``) never race: a job is either given back or run, never both.
    A withdrawal is read between jobs, and also during a long one: the master
    follows its ``X`` line with :data:`WITHDRAW_SIGNAL`, whose handler reads
    the pipe while the job's own code runs.
    """

    def __init__(self, batch_dir: str, slot: str, master_pid: int, report: int) -> None:
        self._slot = _Slot(batch_dir, slot)
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
        if self._in_job:
            self._in_job = False  # not re-entered by a second signal
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
            try:
                data = self._input(pack, int(offset), int(size))
                self._slot.lay_out(job, program, data, attempt)
            except (OSError, protocol.ProtocolError) as exc:
                reason = f"the local worker could not lay out job {job}: {explain_os_error(exc)}"
            else:
                self._in_job = True
                try:
                    record = execute(self._slot.program_bytes, data, functools.partial(str, job))
                finally:
                    self._in_job = False
                try:
                    self._slot.write_output(record)
                except OSError as exc:
                    why = explain_os_error(exc)
                    reason = f"the runner could not write the result of job {job}: {why}"
            self._deliver(job, attempt, reason)
            self._slot.take_spare()

    def _input(self, pack: str, offset: int, size: int) -> bytes:
        if offset >= 0:
            return self._packs.read(pack, offset, size)
        # A batch journaled by an older release: one data file per job in download/.
        path = os.path.join(self._slot.download, check_pack_name(pack))
        return protocol.read_bounded(Path(path), 2**31)

    def _deliver(self, job: str, attempt: int, failure: str) -> None:
        """Move the record into ``new/`` and say so; with ``failure``, deliver an error record."""
        if os.getppid() != self._master_pid:
            os._exit(0)  # orphaned: this job is no longer ours to report
        tag = record_tag(self._slot.name, attempt)
        name = protocol.record_file_name(job, tag)
        try:
            if not failure:
                self._slot.deliver(name)
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
