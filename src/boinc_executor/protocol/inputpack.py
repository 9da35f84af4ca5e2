"""Input packs: the embedded backend's data files, appended to one file and found by offset.

A data file per job would cost the master a file creation and, once the batch
is done, a deletion for every call; on ext4 that is the dominant cost of a
trivial job, and it grows severalfold in the minute after many deletions. So
the embedded backend appends each job's data file (the same framed bytes a
BOINC volunteer gets as ``data.pkl``) to an append-only pack, and the journal
line records where: ``"data": "<pack name>", "data_offset": N, "data_size": M``.
A worker reads one job's bytes with a single ``pread``.

A pack is only ever appended to. A master killed mid-append leaves a torn tail
that no journal line points into; the next run appends after it. The bytes are
self-checking as far as it matters: a data file's header names its job, and the
runner refuses a data file for another job, so a wrong offset can never run
the wrong calls silently.

Standard library only, like the rest of the protocol package.
"""

from __future__ import annotations

import os
import re

from ..errors import ProtocolError

__all__ = ["PACK_NAME", "PackReader", "PackWriter", "check_pack_name"]

#: The pack a local batch appends its inputs to, inside ``BATCH_DIR/local/``.
PACK_NAME = "inputs.pack"

_PACK_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


def check_pack_name(name: str) -> str:
    """Validate a pack (or data file) name taken from a journal line; returns it unchanged.

    Raises:
        ProtocolError: the name could point outside the pack directory.
    """
    if not _PACK_NAME_RE.fullmatch(name) or ".." in name:
        raise ProtocolError(f"{name!r} is not an input pack name")
    return name


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``os.pread`` where the OS has it (not on Windows), else seek and read."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


class PackWriter:
    """Appends data files to a pack; the master's side.

    Writes are buffered; :meth:`flush` hands them to the OS, which the backend
    does before the journal lines that point at them are written, so a
    journaled offset always has its bytes (the journal itself is flushed, not
    fsynced, so both survive a killed master and neither a power cut).

    Args:
        directory: where the pack lives.
        name: the pack's file name.
    """

    def __init__(self, directory: str, name: str = PACK_NAME) -> None:
        self.name = check_pack_name(name)
        self._file = open(os.path.join(directory, name), "ab")  # noqa: SIM115 - kept open
        self._offset = self._file.tell()  # after any torn tail a killed master left

    def append(self, data: bytes) -> int:
        """Queue ``data`` at the end of the pack; returns its offset."""
        offset = self._offset
        self._file.write(data)
        self._offset = offset + len(data)
        return offset

    def flush(self) -> None:
        """Hand every appended byte to the OS."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the pack."""
        self._file.close()


class PackReader:
    """Reads data files out of packs by offset; a worker's side.

    Each pack is opened once and kept open, so a job costs one ``pread``.

    Args:
        directory: where the packs live.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._fds: dict[str, int] = {}

    def read(self, name: str, offset: int, size: int) -> bytes:
        """The ``size`` bytes at ``offset`` of pack ``name``.

        Raises:
            ProtocolError: the pack is shorter than the journal says.
            OSError: the pack cannot be opened or read.
        """
        fd = self._fds.get(name)
        if fd is None:
            path = os.path.join(self._directory, check_pack_name(name))
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._fds[name] = fd
        data = _pread(fd, size, offset)
        if len(data) != size:
            raise ProtocolError(
                f"input pack {name} holds {len(data)} of the {size} bytes at offset {offset}; "
                "the batch directory was truncated or copied while a master was writing it"
            )
        return data

    def close(self) -> None:
        """Close every pack."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
