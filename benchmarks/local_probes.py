"""File-system and syscall probes for ``bench_local.py``: inotify counts, strace counts, churn.

Kept apart from the benchmark's timing code: these look at what a run does to
the file system (files created, deleted and renamed per job), how many system
calls a job costs, and how a file system that just lost many files slows it.
Linux only where it says so; every probe returns None where it cannot measure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

__all__ = ["FileEvents", "churn", "syscalls"]

_IN_CREATE, _IN_DELETE, _IN_MOVED_TO, _IN_ISDIR = 0x100, 0x200, 0x80, 0x40000000
_EVENT = struct.Struct("iIII")


class FileEvents:
    """Counts files created, deleted and moved in under a directory tree (inotify).

    Directories created while it watches are watched too. Use as a context
    manager around the run; :attr:`counts` then holds ``created``, ``deleted``
    and ``moved_in`` (files only).
    """

    def __init__(self, root: Path) -> None:
        self.counts: Counter[str] = Counter()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs: dict[int, str] = {}
        self._stop = os.pipe()
        for path, _subdirs, _files in os.walk(root):
            self._watch(path)
        self._thread = threading.Thread(target=self._read, daemon=True)

    @staticmethod
    def available() -> bool:
        """Whether inotify can be used here."""
        return sys.platform.startswith("linux")

    def _watch(self, path: str) -> None:
        mask = _IN_CREATE | _IN_DELETE | _IN_MOVED_TO
        wd = self._libc.inotify_add_watch(self._fd, path.encode(), mask)
        if wd >= 0:
            self._dirs[wd] = path

    def _read(self) -> None:
        buffer = b""
        while True:
            ready, _, _ = select.select([self._fd, self._stop[0]], [], [])
            with contextlib.suppress(BlockingIOError):
                buffer += os.read(self._fd, 1 << 20)
            while len(buffer) >= _EVENT.size:
                wd, mask, _cookie, length = _EVENT.unpack_from(buffer)
                end = _EVENT.size + length
                if len(buffer) < end:
                    break
                name = buffer[_EVENT.size : end].rstrip(b"\0").decode()
                buffer = buffer[end:]
                if mask & _IN_ISDIR:
                    if mask & _IN_CREATE and wd in self._dirs:
                        self._watch(os.path.join(self._dirs[wd], name))
                    continue
                if mask & _IN_CREATE:
                    self.counts["created"] += 1
                elif mask & _IN_DELETE:
                    self.counts["deleted"] += 1
                elif mask & _IN_MOVED_TO:
                    self.counts["moved_in"] += 1
            if self._stop[0] in ready:
                return

    def __enter__(self) -> FileEvents:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self._stop[1], b"x")
        self._thread.join()
        for fd in (self._fd, *self._stop):
            os.close(fd)


def churn(directory: Path, files: int = 20_000) -> None:
    """Create and delete ``files`` small files in ``directory`` (the "after deletions" state)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        with open(directory / f"churn-{i}", "wb") as fh:
            fh.write(b"x" * 100)
    shutil.rmtree(directory)


# "% time  seconds  usecs/call  calls  errors  syscall": the calls column of the total line.
_STRACE_TOTAL = re.compile(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)\s", re.MULTILINE)


def syscalls(child_argv: list[str], out: Path) -> int | None:
    """Total system calls of a child process tree under ``strace -c -f``, or None."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    done = subprocess.run(
        [strace, "-c", "-f", "-o", str(out), *child_argv],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"strace child failed:\n{done.stderr[-2000:]}")
    match = _STRACE_TOTAL.search(out.read_text())
    return int(match.group(1)) if match else None
