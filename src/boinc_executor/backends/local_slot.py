"""A local worker's slot: the directory a job is laid out in, as the BOINC client does it.

In the steady state, per job, nothing is created or deleted but the record itself:

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
  second time out of the slot; its record is written in place over a handled
  record's file where that file lies (lent back to this worker, see
  :meth:`Slot.lend`), or into a new ``result.pkl`` in the slot when none is left,
  and one rename moves it to ``BATCH_DIR/new/<job>.local-<slot>-<attempt>.result``:
  the one file per job the protocol needs, since results are learned only from
  records in ``new/``.

The worker is the runner's host here, as the BOINC client is on a volunteer's
machine, and it plays the runner's slot I/O (``volunteer/slotio.py``) with the
descriptors it keeps: between two jobs every system call counts, since on a
busy core each one runs with cold caches (ten fewer calls per job made a
10 ms task's throughput about 1% higher).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections import deque

from .. import protocol
from ..protocol.fileio import rewrite_fd
from ..volunteer.slotio import read_program

__all__ = ["MAX_LENT", "MAX_SPARE_BYTES", "MIN_SPARES", "SPARE_DIR", "Slot", "lent_cap"]

_NOT_FINISHED = b"\0\0"  # boinc_finish_called before the job has finished
_FINISHED = b"0\n"  # what boinc_finish_called holds once it has (the BOINC API writes it)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_SLOT_FILE_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
# A spare is opened without blocking, so a FIFO planted under a lent name cannot stall.
_SPARE_FLAGS = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC


#: under ``local/``: each slot's lent records while its worker is idle
SPARE_DIR = "spare"
#: handled records a worker keeps for reuse at least, when they fit (see _fits)
MIN_SPARES = 256
#: ... and a busy one: twice the most records one lend brought so far, up to this
#: many, so that its spares last from one lend to the next. (Capped at 256, a sync
#: late by some 50 ms at 3,000 jobs/s per worker left a worker short: it created a
#: file per job until the next lend, then deleted as many.)
MAX_LENT = 4096
# Larger records are deleted, not reused: creating their file costs little next to
# writing them, and this bounds the disk spares take.
MAX_SPARE_BYTES = 1 << 20
# An idle worker's spares, in all: as many as MIN_SPARES records of the largest size.
# (A busy one keeps at most twice what one sync of the pack handed back.)
_MAX_STASH_BYTES = MIN_SPARES * MAX_SPARE_BYTES


def lent_cap(cap: int, lent: int) -> int:
    """How many lent records a worker keeps once ``lent`` more came in one lend.

    The master keeps the same count of names as lent (so that its scans leave
    them alone), from the same lends: both sides apply this to every ``R`` line.
    """
    return min(MAX_LENT, max(cap, 2 * lent))


def _fits(st: os.stat_result) -> bool:
    """Whether a lent record's file may be reused: a lone regular file of at most 1 MiB.

    (A second hard link would be written through; a larger file is not worth keeping.)
    """
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size <= MAX_SPARE_BYTES


def _listing(directory: str) -> list[str]:
    """The names in ``directory``, none if it does not exist."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _reusable(path: str) -> tuple[int, int] | None:
    """``path`` opened for writing, with its size, if it :func:`_fits`."""
    try:
        fd = os.open(path, _SPARE_FLAGS)
    except OSError:
        return None  # a symlink (O_NOFOLLOW), a directory, gone
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or not _fits(st):
        os.close(fd)
        return None
    return fd, st.st_size


class Slot:
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
        self._cap = MIN_SPARES  # how many of them are kept (lent_cap)
        self.spare_dir = os.path.join(local, SPARE_DIR, name)
        # (name, size) of each; a dead predecessor's stash, if any, is reused too
        # (each file is checked again when taken).
        self._stashed: deque[tuple[str, int]] = deque()
        self._stashed_bytes = 0
        for left in _listing(self.spare_dir):
            with contextlib.suppress(OSError):
                self._keep_stashed(left, os.lstat(os.path.join(self.spare_dir, left)).st_size)
        self.result = os.path.join(self.path, protocol.OPEN_RESULT)
        self._remove_result()  # left by a worker that died mid-job in this slot
        # A spare opened for the next record, until it is written over: (fd, size, path).
        self._output: tuple[int, int, str] | None = None
        self._written = ""  # where the record just written lies, until delivered
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
        scans leave lent records alone), and the next record is written over one
        where it lies, then renamed to its own name: a record's file costs one
        rename per job and the master no file operation. (Moved back to the
        slot's ``result.pkl`` first, it cost two; through a spare directory, three.)
        Beyond :func:`lent_cap`, the oldest are deleted.
        """
        spares = self._spares
        self._cap = lent_cap(self._cap, len(names))
        # Only ever a record name: nothing outside new/ is touched.
        spares.extend(n for n in names if protocol.parse_record_name(n) is not None)
        while len(spares) > self._cap:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.new, spares.popleft()))

    def take_spare(self) -> None:
        """Open a lent record's file for the next job's record, if none is open.

        The record is then written over an existing file in place (truncating
        what is left of the old one) instead of into a new file per job: on ext4
        a creation costs up to 30x a rewrite. Only a lone regular file of at
        most 1 MiB is kept; anything else is unlinked (so a file with a second
        hard link is never written through; a directory stays for the master's
        scan to quarantine). The worker calls this as soon as a job's record has
        been delivered, so that the open is done while it waits for the next job,
        not on that job's way.
        """
        while self._output is None and (self._spares or self._stashed):
            if self._spares:
                path = os.path.join(self.new, self._spares.pop())
            else:
                name, size = self._stashed.pop()
                self._stashed_bytes -= size
                path = os.path.join(self.spare_dir, name)
            opened = _reusable(path)
            if opened is None:
                with contextlib.suppress(OSError):  # gone meanwhile, or a directory
                    os.unlink(path)
                continue
            self._output = (*opened, path)

    @property
    def lent_in_new(self) -> bool:
        """Whether lent records this worker has not reused wait in ``new/``."""
        return bool(self._spares)

    def stash_spares(self) -> None:
        """Move the lent records waiting in ``new/`` to the slot's spare directory.

        Called when the worker has had nothing to do for a moment, so that an
        idle executor's ``new/`` holds only records still to be handled, and the
        next burst of jobs still finds files to reuse (as many as the last one
        needed). A lone regular file of at most 1 MiB is kept, up to the worker's
        :func:`lent_cap` and 256 MiB in all; anything else is deleted.
        """
        os.makedirs(self.spare_dir, exist_ok=True)
        if self._output is not None and os.path.dirname(self._output[2]) == self.new:
            fd, size, path = self._output  # the one opened for the next record: it moves too
            target = os.path.join(self.spare_dir, os.path.basename(path))
            try:
                os.rename(path, target)
                self._output = (fd, size, target)
            except OSError:
                os.close(fd)  # left to the master's scan
                self._output = None
        while self._spares:
            name = self._spares.popleft()
            path = os.path.join(self.new, name)
            try:
                st = os.lstat(path)
                if _fits(st) and self._room_for(st.st_size):
                    os.rename(path, os.path.join(self.spare_dir, name))
                    self._keep_stashed(name, st.st_size)
                else:
                    os.unlink(path)
            except OSError:
                continue  # gone already; or not removable, and then a scan deals with it

    def _room_for(self, size: int) -> bool:
        """Whether the spare directory may keep one more file of ``size`` bytes."""
        return len(self._stashed) < self._cap and self._stashed_bytes + size <= _MAX_STASH_BYTES

    def _keep_stashed(self, name: str, size: int) -> None:
        """Note a file now in the spare directory, with its size (for the 256 MiB bound)."""
        self._stashed.append((name, size))
        self._stashed_bytes += size

    def lay_out(self, job: str, program: str, data: bytes, attempt: int) -> None:
        """Lay a job out as the BOINC client does in ``<copy_file/>`` mode (boinc-facts §6)."""
        self.take_spare()
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
        # Not finished yet: two NUL bytes where write_output writes "0\n" at the end,
        # rewritten in place (the file is never emptied, see _rewrite).
        self._rewrite(self._finish, _NOT_FINISHED)

    def write_output(self, record: bytes) -> None:
        """Write the job's record, then mark it finished.

        What the runner's ``write_result`` does on a volunteer's host, in place
        over the spare opened for it (or into a new ``result.pkl``), and through
        the descriptor of ``boinc_finish_called`` kept open.
        """
        output, self._output = self._output, None
        self._write_record(output, record)
        self._rewrite(self._finish, _FINISHED)

    def _write_record(self, output: tuple[int, int, str] | None, record: bytes) -> None:
        """Write ``record`` over ``output`` (fd, size, path), or into a new ``result.pkl``."""
        if output is None:  # (never left behind: a failed delivery removes it)
            output = (os.open(self.result, _OUTPUT_FLAGS, 0o666), 0, self.result)
        fd, size, self._written = output
        try:
            rewrite_fd(fd, record, size)
        finally:
            os.close(fd)

    def deliver(self, record_name: str, record: bytes) -> None:
        """Move the record just written into ``new/`` under its name, as the assimilator would.

        A spare that vanished under the record (deleted by the master's scan,
        which may do so once the name has fallen out of what it counts as lent)
        is no loss: the record, still in hand, is written into a new file instead.

        Raises:
            OSError: the record could not be delivered; nothing of it is left behind.
        """
        target = os.path.join(self.new, record_name)
        written, self._written = self._written, ""
        try:
            os.rename(written, target)
            return
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(written)
            if written == self.result or not isinstance(exc, FileNotFoundError):
                raise
        try:
            self._write_record(None, record)
            os.rename(self.result, target)
        except OSError:
            self._remove_result()
            raise
        finally:
            self._written = ""

    def discard_output(self) -> None:
        """Drop a partial or unusable record, so the next job starts without one.

        A spare opened but not yet written over is kept for the next job.
        """
        written, self._written = self._written, ""
        if written:
            with contextlib.suppress(OSError):
                os.unlink(written)
