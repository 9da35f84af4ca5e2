"""Crash-safe and hostile-safe file primitives shared by every process of the protocol.

Writers replace files atomically (temp file in the same directory, then
``os.replace``), so a reader never sees half a file; readers of files another
party wrote read them bounded and without following links, so a volunteer's
upload cannot make a reader block, exhaust memory or read outside its tree.
Standard library only: the volunteer runner ships this module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from ..errors import ProtocolError

__all__ = ["atomic_write", "read_bounded", "rewrite_fd"]


def rewrite_fd(fd: int, data: bytes, size: int) -> None:
    """Make ``data`` the whole content of the open file ``fd``, now ``size`` bytes long.

    Written in place and truncated only when it shrinks: freeing and
    re-allocating a block (``O_TRUNC``, a truncate to zero, a same-size truncate)
    is what makes a rewrite cost up to 50x more on ext4. For files only this
    process writes, in a slot (the runner's outputs, the local worker's inputs).
    """
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.pwrite(fd, view[written:], written)
    if size > len(data):
        os.ftruncate(fd, len(data))


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int | None = None,
    gid: int | None = None,
    durable: bool = False,
) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or none of it.

    The temp file lives in the target directory (same file system) and is
    ``os.replace``d over the target; its name starts with ``.`` so directory
    scanners skip it. The file gets ``mode``, by default what a plain ``open``
    would give (0o666 less the umask), not ``mkstemp``'s 0o600: the assimilator
    writes records as the BOINC daemon user that the submitting user must read.

    Args:
        path: the file to create or replace.
        data: its new content.
        mode: permission bits (default: 0o666 less the umask).
        gid: group to give the file, where the caller may (else it is left as is).
        durable: fsync before the replace (configuration files an operator relies on).
    """
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            if gid is not None:
                with contextlib.suppress(PermissionError):  # not in that group: keep ours
                    os.fchown(fh.fileno(), -1, gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """Create a fresh temp file beside ``path`` as ``open`` would (0o666, less the umask).

    ``tempfile.mkstemp`` forces 0o600; creating with ``O_EXCL`` under an unguessable
    name is just as safe and lets the kernel apply the umask, with no need to read it.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def read_bounded(path: str | Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes, never following a symlink.

    The size is checked on the open descriptor before anything is read, and the
    read itself is capped, so a file that grows after the check cannot blow past
    the limit. FIFOs and devices are refused without blocking.

    Raises:
        ProtocolError: not a regular file, or larger than ``limit``.
        OSError: the file vanished or cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno is not None and os.path.islink(path):
            raise ProtocolError(f"{os.path.basename(path)} is a symbolic link; refused") from exc
        raise
    name = os.path.basename(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProtocolError(f"{name} is not a regular file; refused")
        if st.st_size > limit:
            raise ProtocolError(f"{name} is {st.st_size} bytes, over the {limit}-byte limit")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            # One read for a file that did not grow: asking for a byte more than its
            # size returns short, which on a regular file means the end.
            want = min(remaining, max(st.st_size + 1, 1 << 16), 1 << 24)
            chunk = os.read(fd, want)
            chunks.append(chunk)
            remaining -= len(chunk)
            if len(chunk) < want:
                break
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ProtocolError(f"{name} grew past the {limit}-byte limit while being read")
    return data
