"""The runner's slot I/O: BOINC's open names resolved, each file opened once.

A BOINC client lays a job out in a slot directory under the open names of its
files: each either the file itself (``<copy_file/>`` mode) or a soft-link file
holding ``<soft_link>RELATIVE/PATH</soft_link>`` (boinc-facts §6). These
functions read the inputs and write the outputs through either form, never
following a symbolic link and refusing anything that is not a regular file.

It imports only the standard library and the protocol: it ships to volunteers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .. import protocol
from ..protocol.fileio import rewrite_fd

__all__ = ["read_input", "read_program", "write_in_place", "write_result"]

_SOFT_LINK_OPEN = b"<soft_link>"
_SOFT_LINK_CLOSE = b"</soft_link>"
_MAX_LINK_FILE = 4096
_MAX_INPUT_BYTES = 2**31

# A long-lived local worker runs thousands of jobs in one slot, so each file is
# opened once per job at most and the program file, which stays linked while it
# is unchanged, is not read again at all. The outputs are written in place
# (write + ftruncate, never O_TRUNC or a temp file and rename): nothing reads
# them before the runner exits, the client renames result.pkl away afterwards,
# and boinc_finish_called, written last, is what says the run finished.

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_BINARY", 0)
_RDWR_FLAGS = (
    os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
)
# The program file last read, by (device, inode, size, mtime): at most one entry.
_program_file: dict[tuple[int, int, int, int], bytes] = {}


def _soft_link_target(slot: str, head: bytes) -> str | None:
    """The path a BOINC soft-link file points at, or None if ``head`` is not one."""
    head = head.strip()
    if not (head.startswith(_SOFT_LINK_OPEN) and head.endswith(_SOFT_LINK_CLOSE)):
        return None
    target = head[len(_SOFT_LINK_OPEN) : -len(_SOFT_LINK_CLOSE)].decode().strip()
    return str((Path(slot) / target).resolve())


def _open_input(slot: str, open_name: str) -> tuple[int, os.stat_result, bytes | None]:
    """Open a logical input once: (fd, its stat, its bytes when small enough to have read).

    A small file is read whole to see whether it is a soft-link file; if it is,
    the target is opened instead (bounded and without following symlinks, as
    ``read_bounded`` does), and its bytes are read by the caller.
    """
    path = os.path.join(slot, open_name)
    fd, st = _open_regular(path)
    if st.st_size > _MAX_LINK_FILE:
        return fd, st, None
    try:
        head = os.read(fd, _MAX_LINK_FILE + 1)
        target = _soft_link_target(slot, head)
    except BaseException:
        os.close(fd)
        raise
    if target is None:
        return fd, st, head
    os.close(fd)
    fd, st = _open_regular(target)
    return fd, st, None


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open a regular file for reading, never through a symlink: (fd, its stat)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise protocol.ProtocolError(
                f"{os.path.basename(path)} is a symbolic link; refused"
            ) from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise protocol.ProtocolError(f"{os.path.basename(path)} is not a regular file; refused")
    return fd, st


def _read_rest(fd: int, st: os.stat_result, head: bytes | None, name: str) -> bytes:
    if st.st_size > _MAX_INPUT_BYTES:
        raise protocol.ProtocolError(
            f"{name} is {st.st_size} bytes, over the {_MAX_INPUT_BYTES}-byte limit"
        )
    if head is not None:
        return head
    chunks = []
    remaining = _MAX_INPUT_BYTES + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    if remaining <= 0:
        raise protocol.ProtocolError(f"{name} grew past the {_MAX_INPUT_BYTES}-byte limit")
    return b"".join(chunks)


def read_input(slot: str, open_name: str) -> bytes:
    """The bytes of a logical input file, opened and read once."""
    fd, st, head = _open_input(slot, open_name)
    try:
        return _read_rest(fd, st, head, open_name)
    finally:
        os.close(fd)


def read_program(slot: str) -> bytes:
    """The program file's bytes; not read again while the same file stays linked."""
    # The identity of the slot's file is enough even for a soft-link file: it
    # names a physical file, and physical file names are never reused for new bytes.
    # (Anything but a regular file misses the cache and is refused by _open_input.)
    st = os.lstat(os.path.join(slot, protocol.OPEN_PROGRAM))
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _program_file.get(identity) if stat.S_ISREG(st.st_mode) else None
    if cached is not None:
        return cached
    fd, st, head = _open_input(slot, protocol.OPEN_PROGRAM)
    try:
        data = _read_rest(fd, st, head, protocol.OPEN_PROGRAM)
    finally:
        os.close(fd)
    _program_file.clear()
    _program_file[identity] = data
    return data


def write_in_place(path: str, data: bytes) -> None:
    """Write ``data`` as the whole content of ``path``, reusing the file if it exists."""
    fd = os.open(path, _WRITE_FLAGS, 0o666)
    try:
        rewrite_fd(fd, data, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _write_output(slot: str, record: bytes) -> None:
    """Write ``result.pkl``: the file itself, or the target of its soft-link file.

    One open serves both: a small existing file is read to see whether it is a
    soft-link file (in ``<copy_file/>`` mode the file is absent or, on the
    embedded backend, an old record to be rewritten in place).
    """
    path = os.path.join(slot, protocol.OPEN_RESULT)
    fd = os.open(path, _RDWR_FLAGS, 0o666)
    try:
        # What the read returns is the size, unless the file is longer (O_NONBLOCK:
        # a FIFO planted there fails the write instead of blocking the runner).
        head = os.read(fd, _MAX_LINK_FILE + 1)
        if len(head) > _MAX_LINK_FILE:
            target, size = None, os.fstat(fd).st_size
        else:
            target, size = _soft_link_target(slot, head) if head else None, len(head)
        if target is None:
            rewrite_fd(fd, record, size)
            return
    finally:
        os.close(fd)
    write_in_place(target, record)


def write_result(slot: str, record: bytes) -> None:
    """Write the record under the output's open name, then ``boinc_finish_called``.

    Raises:
        OSError: either could not be written (a full disk, most likely).
    """
    _write_output(slot, record)
    write_in_place(os.path.join(slot, protocol.FINISH_FILE), b"0\n")
