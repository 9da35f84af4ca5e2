"""Learning of records as they land in ``BATCH_DIR/new/``, from the kernel (Linux inotify).

The embedded backend's workers name each record they deliver; the BOINC
assimilator and the PyBOINC API only drop files into ``new/``. Without a word
from them, the collector would learn of a record at its next scan, up to a
poll interval later, and a scan lists the whole directory. An inotify watch on
``new/`` names each file as it is renamed in (``IN_MOVED_TO``, how every
record is delivered) or closed after writing (``IN_CLOSE_WRITE``, a writer
that does not rename), so a burst of deliveries is decoded while it arrives.

A name from the kernel is only a hint: the collector checks and reads the
file exactly as it does one a scan found, and the periodic scan stays the
safety net. So nothing is lost where the watch cannot be had (not Linux, a
file system inotify does not see into such as NFS written from another host,
the user's watch limit reached): :meth:`NewRecordWatch.start` returns False and
scans do it all. When the kernel's event queue overflows, a scan is asked for.
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable

from .protocol import parse_record_name

__all__ = ["NewRecordWatch"]

logger = logging.getLogger("boinc_executor")

# <sys/inotify.h>
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000  # the watch was removed: close() did it, or new/ is gone
_IN_ONLYDIR = 0x01000000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 1 << 16
_COALESCE_SECONDS = 0.005  # after a read: the first record of a burst waits for none


class NewRecordWatch:
    """Calls ``landed(records)`` with the record-named regular files that land in a directory.

    Args:
        directory: the batch's ``new/``.
        landed: called on the watch's thread with ``(job, file name)`` of each regular
            file (checked with ``lstat``) whose name has a record's form
            (:func:`~.protocol.parse_record_name`), one list per read of the kernel's
            events. Anything else, a symlink or FIFO under a record's name included,
            is left to scans.
        overflowed: called when the kernel dropped events, so that a scan finds the rest.
        name: the thread's name.
    """

    def __init__(
        self,
        directory: str,
        landed: Callable[[list[tuple[str, str]]], None],
        overflowed: Callable[[], None],
        name: str,
    ) -> None:
        self._directory = directory
        self._landed = landed
        self._overflowed = overflowed
        self._name = name
        self._libc: ctypes.CDLL | None = None
        self._fd = -1
        self._wd = -1
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Begin watching; False where inotify is unavailable (scans then find every record)."""
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_CLOEXEC)
        except (OSError, AttributeError):
            return False
        if fd < 0:
            logger.debug("no inotify for %s: %s", self._directory, os.strerror(ctypes.get_errno()))
            return False
        mask = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_ONLYDIR
        wd = libc.inotify_add_watch(fd, os.fsencode(self._directory), mask)
        if wd < 0:
            # ENOSPC: the user's fs.inotify.max_user_watches is used up; scans do the work.
            logger.debug("cannot watch %s: %s", self._directory, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return False
        self._libc, self._fd, self._wd = libc, fd, wd
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        """Stop watching and wait for the thread (removing the watch wakes its read)."""
        if self._thread is None or self._libc is None:
            return
        self._libc.inotify_rm_watch(self._fd, self._wd)
        self._thread.join()
        os.close(self._fd)
        self._thread = None

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except InterruptedError:
                continue
            except OSError as exc:
                logger.warning(
                    "watching %s failed: %s; scans find the records", self._directory, exc
                )
                return
            if self._dispatch(chunk):
                return
            # A burst of deliveries then comes in a few large reads, not one per
            # record: each wake-up of this thread takes the GIL from the decoder.
            time.sleep(_COALESCE_SECONDS)

    def _dispatch(self, chunk: bytes) -> bool:
        """Hand on one read's events; True once the watch is gone."""
        records: list[tuple[str, str]] = []
        gone = False
        offset = 0
        while offset + _EVENT.size <= len(chunk):
            _wd, mask, _cookie, length = _EVENT.unpack_from(chunk, offset)
            start = offset + _EVENT.size
            offset = start + length
            if mask & _IN_IGNORED:
                gone = True
                break
            if mask & _IN_Q_OVERFLOW:
                self._overflowed()
                continue
            name = chunk[start:offset].rstrip(b"\0").decode("utf-8", "surrogateescape")
            parsed = parse_record_name(name)
            if parsed is not None and self._regular(name):
                records.append((parsed[0], name))  # (else the next scan deals with it)
        if records:
            try:
                self._landed(records)
            except Exception:  # never lose the watch; the scan finds what this missed
                logger.exception(
                    "handling %d records that landed in %s failed", len(records), self._directory
                )
        return gone

    def _regular(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self._directory, name)).st_mode)
        except OSError:
            return False  # gone already (handled, or moved on)
