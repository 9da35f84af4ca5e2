"""The handled-records pack: every record the master handled, in one append-only file.

A record in ``BATCH_DIR/new/`` is handled once: decoded, its futures resolved,
and its bytes appended here, after which its file in ``new/`` is removed. A
re-run replays a job from its frame in the pack, so it gets exactly the value
the first run got; one file per batch replaces one file per job in ``old/``.

Format (``docs/protocol.md``, "The handled-records pack"): a sequence of frames,
each::

    magic  b"BXP1"          4 bytes
    kind   0 record | 1 refusal   1 byte
    name   length           2 bytes, big-endian
    body   length           8 bytes, big-endian
    name                    the record's file name in new/ (ASCII)
    body                    the record's bytes, or the refusal's UTF-8 message
    crc32  of all the above 4 bytes, big-endian

Promises:

* **First come wins, durably.** :meth:`RecordPack.append` ignores a frame for a
  job the pack already holds, so a late duplicate can never replace a handled
  record, and a re-run reads each job's first frame only.
* **Torn-tail tolerant.** A master killed mid-append leaves an incomplete or
  unverifiable last frame; opening the pack for writing truncates it. Nothing is
  lost by that: a record's file is removed from ``new/`` only after its frame
  was made durable (:meth:`RecordPack.sync`, an ``fdatasync``), so the record
  of a torn frame is still in ``new/`` and is handled again.
* **fsync policy.** Appends are plain ``write`` calls on an ``O_APPEND``
  descriptor: they survive a kill of the master at once. They survive a power
  loss once :meth:`sync` returned, which the decoder calls before it unlinks the
  records' files, batched (one ``fdatasync`` per batch of records, at the latest
  a fraction of a second after the last append).

Standard library only, like the rest of the protocol package.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import NamedTuple

from ..errors import ProtocolError
from .names import HANDLED_PACK, parse_record_name

__all__ = [
    "HANDLED_PACK",
    "KIND_RECORD",
    "KIND_REFUSAL",
    "PackedRecord",
    "RecordPack",
    "handled_records",
]

logger = logging.getLogger("boinc_executor")

KIND_RECORD = 0  # body: the record's bytes as delivered
KIND_REFUSAL = 1  # body: why the record was refused unread (not a regular file, too large)

_MAGIC = b"BXP1"
_HEAD = struct.Struct(">4sBHQ")
_CRC = struct.Struct(">I")
_MAX_NAME = 0xFFFF
_BITMAP_LIMIT = 1 << 32  # job indexes above this are tracked in a set (a hostile name)


class PackedRecord(NamedTuple):
    """Where one job's first handled record sits in the pack."""

    name: str  # the record's file name, as it was in new/
    kind: int  # KIND_RECORD or KIND_REFUSAL
    offset: int  # of the frame
    size: int  # of the body


def encode_frame(name: str, body: bytes, kind: int = KIND_RECORD) -> bytes:
    """One frame of the pack (see the module docstring)."""
    raw = name.encode("ascii")
    if len(raw) > _MAX_NAME:
        raise ValueError(f"record name of {len(raw)} bytes is too long for the pack")
    head = _HEAD.pack(_MAGIC, kind, len(raw), len(body))
    crc = zlib.crc32(body, zlib.crc32(raw, zlib.crc32(head)))
    return b"".join((head, raw, body, _CRC.pack(crc)))


def _scan(fd: int) -> tuple[dict[str, PackedRecord], int, int]:
    """Index a pack: job → first frame; also the end of the last good frame and the file size.

    Only headers are read, except for the last frame, whose checksum is verified so
    that a torn append is told from a complete one; bodies are verified when read.
    """
    size = os.fstat(fd).st_size
    frames: list[tuple[str, PackedRecord]] = []
    offset = 0
    while offset + _HEAD.size <= size:
        magic, kind, name_len, body_len = _HEAD.unpack(os.pread(fd, _HEAD.size, offset))
        end = offset + _HEAD.size + name_len + body_len + _CRC.size
        if magic != _MAGIC or kind not in (KIND_RECORD, KIND_REFUSAL) or end > size:
            break
        name = os.pread(fd, name_len, offset + _HEAD.size).decode("ascii", "replace")
        parsed = parse_record_name(name)
        if parsed is None:
            break
        frames.append((parsed[0], PackedRecord(name, kind, offset, body_len)))
        offset = end
    if frames and offset == size:  # the last frame reaches the end: was its write complete?
        last = frames[-1][1]
        if not _verify(os.pread(fd, offset - last.offset, last.offset)):
            frames.pop()
            offset = last.offset
    index: dict[str, PackedRecord] = {}
    for job, entry in frames:
        index.setdefault(job, entry)
    return index, offset, size


def _job_index(job: str) -> tuple[str, int]:
    """The prefix and index of a job name, cheaply.

    A pack holds one batch's jobs, so these identify them; the prefix still matters
    because a retried job keeps its index under a prefix of its own (``pybr1``).
    """
    cut = job.rfind("_")
    tail = job[cut + 1 :]
    if tail.isascii() and tail.isdigit() and len(tail) < 10:
        return job[: job.find("_")], int(tail)
    return "", _BITMAP_LIMIT


def _verify(frame: bytes) -> bool:
    (crc,) = _CRC.unpack_from(frame, len(frame) - _CRC.size)
    return bool(zlib.crc32(memoryview(frame)[: -_CRC.size]) == crc)


class RecordPack:
    """An open handled-records pack of one batch directory.

    Args:
        path: the pack file; created when missing.
        writable: open it for appends (the master holding the batch lock); a torn
            last frame is then truncated away.

    Raises:
        OSError: the file cannot be opened or created.
    """

    def __init__(self, path: str, *, writable: bool = True) -> None:
        self.path = path
        flags = (os.O_RDWR | os.O_CREAT | os.O_APPEND) if writable else os.O_RDONLY
        self._fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._lock = threading.Lock()
        #: job → its first frame, for every job the pack held when it was opened
        self.index, end, size = _scan(self._fd)
        if end < size:
            if writable:
                logger.warning(
                    "%s: dropping a torn last frame of %d bytes (a kill mid-append); its record "
                    "is still in new/ and is handled again",
                    path,
                    size - end,
                )
                os.ftruncate(self._fd, end)
            else:
                logger.warning("%s: ignoring %d unreadable bytes at its end", path, size - end)
        # Where the next frame starts: this writer holds the batch lock, so no one
        # else appends, and a failed write is cut back to here without an fstat.
        self._end = end
        # Which job indexes have a frame, for jobs appended in this run too: a bitmap
        # per job-name prefix rather than a growing dict, so a long run's memory stays flat.
        self._packed: dict[str, bytearray] = {}
        self._others: set[str] = set()
        for job in self.index:
            self._mark(job)
        self._dirty = False

    def _mark(self, job: str) -> None:
        """Note that ``job`` has a frame."""
        prefix, index = _job_index(job)
        if index >= _BITMAP_LIMIT:  # not an index this batch created; keep it exact anyway
            self._others.add(job)
            return
        byte, bit = divmod(index, 8)
        bits = self._packed.setdefault(prefix, bytearray())
        if byte >= len(bits):
            bits.extend(bytes(byte + 1 - len(bits) + 4096))
        bits[byte] |= 1 << bit

    def holds(self, job: str) -> bool:
        """Whether ``job`` has a frame (opened with it, or appended since)."""
        with self._lock:
            return self._holds(job)

    def _holds(self, job: str) -> bool:
        prefix, index = _job_index(job)
        if index >= _BITMAP_LIMIT:
            return job in self._others
        byte, bit = divmod(index, 8)
        bits = self._packed.get(prefix)
        return bits is not None and byte < len(bits) and bool(bits[byte] >> bit & 1)

    def append(self, frames: list[tuple[str, bytes, int]]) -> int:
        """Append ``(record name, body, kind)`` frames in one write; returns how many were new.

        Names must be record names (:func:`~.records.parse_record_name` accepts them).

        A frame for a job that already has one is skipped: the first record wins.
        A failed write (a full disk) is cut off again, so the pack never holds a
        torn frame before a good one, and the jobs stay unpacked.

        Raises:
            OSError: the write failed; nothing was appended.
        """
        with self._lock:
            jobs: dict[str, bytes] = {}
            for name, body, kind in frames:
                job = name.partition(".")[0]  # callers pass names parse_record_name accepted
                if job not in jobs and not self._holds(job):
                    jobs[job] = encode_frame(name, body, kind)
            if not jobs:
                return 0
            data = b"".join(jobs.values())
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                os.ftruncate(self._fd, self._end)
                raise
            self._end += len(data)
            for job in jobs:
                self._mark(job)
            self._dirty = True
        return len(jobs)

    def sync(self) -> None:
        """Make every frame appended so far durable (before their files leave ``new/``)."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
        os.fdatasync(self._fd) if hasattr(os, "fdatasync") else os.fsync(self._fd)

    def read(self, job: str) -> tuple[PackedRecord, bytes]:
        """The first frame of ``job`` from the index (its body verified).

        Raises:
            KeyError: the pack held no frame of ``job`` when it was opened.
            ProtocolError: the frame fails its checksum.
        """
        entry = self.index[job]
        length = _HEAD.size + len(entry.name) + entry.size + _CRC.size
        frame = os.pread(self._fd, length, entry.offset)
        if len(frame) != length or not _verify(frame):
            raise ProtocolError(
                f"the frame of record {entry.name} at byte {entry.offset} of {self.path} is "
                "corrupt (checksum mismatch)"
            )
        start = _HEAD.size + len(entry.name)
        return entry, frame[start : start + entry.size]

    def records(self) -> Iterator[tuple[PackedRecord, bytes]]:
        """Every job's first frame, in the order they were handled."""
        for job in sorted(self.index, key=lambda j: self.index[j].offset):
            yield self.read(job)

    def reset(self) -> None:
        """Empty the pack (after its records were put back into ``new/``)."""
        with self._lock:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._end = 0
            self.index = {}
            self._packed = {}
            self._others = set()
            self._dirty = False

    def close(self) -> None:
        """Sync (if anything was appended) and close the file."""
        try:
            self.sync()
        finally:
            os.close(self._fd)


def handled_records(batch_dir: str | os.PathLike[str]) -> dict[str, PackedRecord]:
    """Job → its handled record in a batch directory's pack, read-only.

    For tools, tests and operators: it never writes, so it is safe while a master
    holds the batch (frames it appended are visible once ``append`` returned).
    """
    try:
        pack = RecordPack(os.path.join(batch_dir, HANDLED_PACK), writable=False)
    except FileNotFoundError:
        return {}
    try:
        return pack.index
    finally:
        pack.close()
