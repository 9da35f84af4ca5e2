"""The batch directory: checkpoint, journal of intent, lock, and the new/ → old/ hand-over.

A batch directory is tied to one persisted batch ID by its checkpoint. Before a
job is handed to a backend, a line describing it is appended to the journal, so
a master killed at any point can be re-run: every journaled job is either
finished (its record is in ``new/`` or ``old/``) or known to the backend, and a
replayed call is matched to its journal line by index and input digest.

One ``filelock`` is held for the executor's lifetime, so two masters never
share a directory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import filelock

from . import protocol
from .errors import BatchError, BatchLockedError

__all__ = ["BatchDir", "Checkpoint", "JournalEntry"]

_compact_json = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What ties a batch directory to its batch.

    Attributes:
        batch_id: the persisted batch ID (BOINC's ``batch.id`` or the local registry's).
        backend: ``"local"`` or ``"boinc"``.
        prefix: the job-name prefix.
        project_dir: the BOINC project root, for the BOINC backend.
        created: when the batch was created (Unix time).
    """

    batch_id: int
    backend: str
    prefix: str = "pyb"
    project_dir: str | None = None
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One job as journaled before it was handed to the backend.

    Attributes:
        job: the job name.
        i: the job index within the batch.
        call: index of the job's first call.
        n: number of calls the job carries (chunk membership).
        digest: digest of the job's input, to match replayed calls.
        program: physical name of the program file.
        data: physical name of the data file, or of the input pack holding it.
        data_offset: where the data file starts in the pack ``data`` (-1: ``data``
            is a file of its own, as on BOINC and in local batches of older releases).
        data_size: the data file's length in the pack.
    """

    job: str
    i: int
    call: int
    n: int
    digest: str
    program: str
    data: str
    data_offset: int = -1
    data_size: int = 0

    def json_line(self) -> bytes:
        """The journal line, built field by field (``asdict`` costs more than the job)."""
        fields: dict[str, str | int] = {
            "job": self.job,
            "i": self.i,
            "call": self.call,
            "n": self.n,
            "digest": self.digest,
            "program": self.program,
            "data": self.data,
        }
        if self.data_offset >= 0:
            fields["data_offset"] = self.data_offset
            fields["data_size"] = self.data_size
        return _compact_json(fields).encode() + b"\n"


class BatchDir:
    """An open, locked batch directory.

    Args:
        path: the batch directory; created if missing.

    Raises:
        BatchLockedError: another executor holds the directory.
        BatchError: the directory cannot be created or locked.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        try:
            for sub in ("", protocol.NEW, protocol.OLD, protocol.QUARANTINE):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BatchError(f"cannot create batch directory {self.path}: {exc}") from exc
        # The lock is released by the collector thread, not the thread that took it.
        self._lock = filelock.FileLock(self.path / protocol.LOCK, timeout=0, thread_local=False)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise BatchLockedError(
                f"batch directory {self.path} is in use by {self._owner()}; "
                "stop that executor first, or use another batch_dir"
            ) from None
        except OSError as exc:
            raise BatchError(f"cannot lock batch directory {self.path}: {exc}") from exc
        owner = f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}"
        protocol.atomic_write(self.path / (protocol.LOCK + ".owner"), owner.encode())
        self._journal: Any = None

    def _owner(self) -> str:
        try:
            return (self.path / (protocol.LOCK + ".owner")).read_text().strip() or "another process"
        except OSError:
            return "another process"

    @property
    def new_dir(self) -> Path:
        """Records not yet handled."""
        return self.path / protocol.NEW

    @property
    def old_dir(self) -> Path:
        """Records already handled."""
        return self.path / protocol.OLD

    # ------------------------------------------------------------------ checkpoint

    def read_checkpoint(self) -> Checkpoint | None:
        """The checkpoint, or None for a fresh directory.

        Raises:
            BatchError: the checkpoint exists but is unreadable.
        """
        path = self.path / protocol.CHECKPOINT
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BatchError(f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(raw)
            return Checkpoint(
                batch_id=int(data["batch_id"]),
                backend=str(data["backend"]),
                prefix=str(data.get("prefix", "pyb")),
                project_dir=data.get("project_dir"),
                created=float(data.get("created", 0.0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BatchError(
                f"{path} is corrupt ({exc}); it ties this directory to a batch, so restore it "
                "or point the executor at a new batch_dir"
            ) from exc

    def write_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Persist the checkpoint atomically."""
        data = dict(asdict(checkpoint), format=protocol.FORMAT_VERSION)
        protocol.atomic_write(self.path / protocol.CHECKPOINT, json.dumps(data, indent=1).encode())

    # ------------------------------------------------------------------ journal

    def read_journal(self) -> dict[int, JournalEntry]:
        """All journaled jobs by index. A torn last line (a kill mid-write) is ignored."""
        entries: dict[int, JournalEntry] = {}
        path = self.path / protocol.JOURNAL
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            return entries
        with fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn write: the job was never handed over
                try:
                    entry = JournalEntry(**json.loads(line))
                except (ValueError, TypeError) as exc:
                    raise BatchError(f"journal {path} has a corrupt line: {exc}") from exc
                entries[entry.i] = entry
        return entries

    def append_journal(self, entries: list[JournalEntry]) -> None:
        """Append entries and flush them to the OS before the jobs go to the backend."""
        if self._journal is None:
            self._journal = (self.path / protocol.JOURNAL).open("ab")
            # Drop a torn last line left by a killed master so the next line starts cleanly.
            size = self._journal.tell()
            if size:
                with (self.path / protocol.JOURNAL).open("rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        self._journal.truncate(self._last_newline(size))
        self._journal.write(b"".join(e.json_line() for e in entries))
        self._journal.flush()

    def _last_newline(self, size: int) -> int:
        with (self.path / protocol.JOURNAL).open("rb") as fh:
            data = fh.read(size)
        return data.rfind(b"\n") + 1

    # ------------------------------------------------------------------ records

    def scan_new(self) -> Iterator[os.DirEntry[str]]:
        """Entries of ``new/``, skipping in-progress temp files (names starting with ``.``)."""
        with os.scandir(self.new_dir) as it:
            for entry in it:
                if not entry.name.startswith("."):
                    yield entry

    def handled_records(self) -> dict[str, str]:
        """Job name → record file name for every record in ``old/`` (first one wins)."""
        found: dict[str, str] = {}
        with os.scandir(self.old_dir) as it:
            for entry in it:
                parsed = protocol.parse_record_name(entry.name)
                if parsed is not None and entry.is_file(follow_symlinks=False):
                    found.setdefault(parsed[0], entry.name)
        return found

    def mark_handled(self, name: str) -> None:
        """Move a record from ``new/`` to ``old/``."""
        os.replace(self.new_dir / name, self.old_dir / name)

    def restore_handled(self) -> int:
        """Move every record from ``old/`` back to ``new/`` (PyBOINC's re-run semantics)."""
        moved = 0
        with os.scandir(self.old_dir) as it:
            for entry in it:
                if protocol.parse_record_name(entry.name) is not None:
                    os.replace(entry.path, self.new_dir / entry.name)
                    moved += 1
        return moved

    def quarantine(self, name: str, reason: str) -> Path:
        """Move a refused file out of ``new/`` (never following it) and note why."""
        target = self.path / protocol.QUARANTINE / f"{time.time_ns()}-{name}"
        os.replace(self.new_dir / name, target)
        protocol.atomic_write(target.with_name(target.name + ".why"), reason.encode())
        return target

    def close(self) -> None:
        """Close the journal and release the lock."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        (self.path / (protocol.LOCK + ".owner")).unlink(missing_ok=True)
        self._lock.release()
