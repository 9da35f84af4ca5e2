"""The batch directory: checkpoint, journal of intent, lock, and the pack of handled records.

A batch directory is tied to one persisted batch ID by its checkpoint. Before a
job is handed to a backend, a line describing it is appended to the journal, so
a master killed at any point can be re-run: every journaled job is either
finished (its record is in ``new/`` or the handled-records pack) or known to the backend, and a
replayed call is matched to its journal line by index and input digest.

One ``filelock`` is held for the executor's lifetime, so two masters never
share a directory.

Design note. The checkpoint also records who owns the batch (``script`` and
``name``; see :mod:`boinc_executor.ownership`), so tools can list batches by
script. A journal line's ``digest`` is ``<function>:<arguments>``
(:mod:`boinc_executor.fingerprint`), so a mismatch can say which half changed.
A job retried under a new name is journaled again at the same index, and
:meth:`BatchDir.read_journal` keeps the last line per index.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import filelock

from . import protocol
from .errors import BatchError, BatchLockedError
from .protocol.pack import RecordPack

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
        script: absolute path of the script that created it ("" if interactive).
        name: the batch's name (the executor's ``name``, else the script's stem).
    """

    batch_id: int
    backend: str
    prefix: str = "pyb"
    project_dir: str | None = None
    created: float = 0.0
    script: str = ""
    name: str = ""


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


_JOURNAL_FIELDS: dict[str, type] = {
    "job": str,
    "i": int,
    "call": int,
    "n": int,
    "digest": str,
    "program": str,
    "data": str,
}
# Where a data file sits in an input pack (the embedded backend); absent: a file of its own.
_PACKED_FIELDS: dict[str, type] = {"data_offset": int, "data_size": int}


def _journal_entry(line: bytes, path: Path, lineno: int) -> JournalEntry:
    """Parse one journal line, checking every field's type (a hand-edited ``"i": "1"`` too).

    Raises:
        BatchError: naming the line and the field, so it can be repaired.
    """
    where = f"journal {path}, line {lineno}"
    fix = "repair that line, or run the batch again with a new batch_dir"
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BatchError(f"{where} is not valid JSON ({exc}); {fix}") from None
    packed = isinstance(raw, dict) and "data_offset" in raw
    expected = {**_JOURNAL_FIELDS, **_PACKED_FIELDS} if packed else _JOURNAL_FIELDS
    if not isinstance(raw, dict) or set(raw) != set(expected):
        fields = ", ".join(_JOURNAL_FIELDS)
        raise BatchError(
            f"{where} must be an object with exactly the fields {fields} (and data_offset, "
            f"data_size for a packed input); {fix}"
        )
    for name, kind in expected.items():
        value = raw[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BatchError(
                f"{where}: field {name!r} is {value!r:.60}, not "
                f"{'an integer' if kind is int else 'text'}; {fix}"
            )
        if isinstance(value, int) and value < 0:
            raise BatchError(f"{where}: field {name!r} is negative; {fix}")
    return JournalEntry(**raw)


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
            for sub in ("", protocol.NEW, protocol.QUARANTINE):
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
        #: ``new/`` as a string: the collector's hot path avoids pathlib
        self.new_path = str(self.path / protocol.NEW)
        try:
            self.pack = self._open_pack()
        except BaseException:
            self._lock.release()
            raise

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
        """Where releases before the handled-records pack kept handled records."""
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
                script=str(data.get("script") or ""),
                name=str(data.get("name") or ""),
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
            for lineno, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break  # torn write: the job was never handed over
                entry = _journal_entry(line, path, lineno)
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

    def _open_pack(self) -> RecordPack:
        """Open the handled-records pack, adopting records a previous release left in ``old/``.

        Older releases kept each handled record as a file in ``old/``. They are
        appended to the pack oldest first (by modification time, then name), the
        first per job winning, and removed once the pack is durable; a kill in
        between only repeats the adoption, which skips jobs already packed.
        """
        path = self.path / protocol.HANDLED_PACK
        try:
            pack = RecordPack(str(path))
            legacy = sorted(_legacy_records(self.old_dir))
            if legacy:
                for start in range(0, len(legacy), 1024):
                    chunk = legacy[start : start + 1024]
                    pack.append(
                        [(n, protocol.read_bounded(Path(p), 1 << 62), 0) for _, n, p in chunk]
                    )
                pack.sync()
                for _, _, legacy_path in legacy:
                    os.unlink(legacy_path)
                with contextlib.suppress(OSError):  # other files an operator put there stay
                    self.old_dir.rmdir()
        except (OSError, protocol.ProtocolError) as exc:
            raise BatchError(
                f"cannot open the handled-records pack {path}: {exc}; fix the file system "
                "cause (permissions, space) and run again"
            ) from exc
        if legacy:
            pack = RecordPack(str(path))  # re-read so the adopted records are indexed
        return pack

    def restore_handled(self) -> int:
        """Put every handled record back into ``new/`` (PyBOINC's re-run semantics).

        Each job's packed record is written back under its own name; any other record
        of that job waiting in ``new/`` is a late duplicate and is removed, so the
        first-come record still wins. The pack is emptied last, so a kill midway
        repeats the restore rather than losing a record.
        """
        pack = self.pack
        restored = 0
        names: dict[str, str] = {}
        for entry, body in pack.records():
            if entry.kind != 0:
                continue  # a refusal: the job is run again, as before its record arrived
            target = self.new_dir / entry.name
            if not target.exists():
                protocol.atomic_write(target, body)
            names[entry.name.partition(".")[0]] = entry.name
            restored += 1
        with os.scandir(self.new_dir) as it:
            for item in it:
                job = item.name.partition(".")[0]
                if names.get(job, item.name) != item.name:
                    os.unlink(item.path)
        os.sync()  # one flush for all of them: the pack is emptied only once they are durable
        pack.reset()
        return restored

    def quarantine(self, name: str, reason: str) -> Path:
        """Move a refused file out of ``new/`` (never following it) and note why."""
        target = self.path / protocol.QUARANTINE / protocol.quarantine_name(name, time.time_ns())
        os.replace(self.new_dir / name, target)
        protocol.atomic_write(
            target.with_name(target.name + ".why"), f"{name!r}: {reason}".encode()
        )
        return target

    def close(self) -> None:
        """Close the journal and the pack, and release the lock."""
        self.pack.close()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        (self.path / (protocol.LOCK + ".owner")).unlink(missing_ok=True)
        self._lock.release()


def _legacy_records(old_dir: Path) -> list[tuple[int, str, str]]:
    """(mtime in ns, name, path) of the record files an older release left in ``old/``."""
    found = []
    try:
        it = os.scandir(old_dir)
    except FileNotFoundError:
        return []
    with it:
        for entry in it:
            if protocol.parse_record_name(entry.name) and entry.is_file(follow_symlinks=False):
                found.append(
                    (entry.stat(follow_symlinks=False).st_mtime_ns, entry.name, entry.path)
                )
    return found
