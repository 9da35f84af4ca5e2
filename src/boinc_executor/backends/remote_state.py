"""What the remote backend keeps on the laptop: a batch registry and per-batch state.

The server holds the jobs; the laptop holds what the server cannot tell it:

* ``$BOINC_EXECUTOR_HOME/remote/<server key>/<batch_id>.json``: where the batch
  directory of a remote batch is, so ``BoincExecutor.resume(batch_id, server=...)``
  finds it from any working directory (the server key is a hash of the URL, so
  two projects' batch IDs never collide);
* ``BATCH_DIR/remote/files.tsv``: ``<our file name>\\t<jf_ name>\\t<size>`` per
  uploaded input, appended before the job is journaled, so a re-run knows the
  staged names of journaled jobs without their bytes;
* ``BATCH_DIR/remote/segments.json``: the server batches this batch's jobs went
  into. BOINC adds jobs to a batch only while it is INIT, i.e. by one
  ``submit_batch`` (§10.2.6), so each later hand-over fills a new server batch
  (a *segment*); the first segment is the batch whose ID is the executor's.

None of these holds the authenticator or anything derived from it; it comes from
:func:`resolve_authenticator` and lives only in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import protocol
from ..config import state_home
from ..errors import BatchError, BatchNotFoundError, ConfigError
from .registry import entry_dir

__all__ = [
    "RemoteState",
    "locate",
    "register",
    "registry_entry",
    "resolve_authenticator",
    "server_key",
]

ENV_SERVER = "BOINC_EXECUTOR_SERVER"
ENV_AUTHENTICATOR = "BOINC_EXECUTOR_AUTHENTICATOR"
ENV_AUTHENTICATOR_FILE = "BOINC_EXECUTOR_AUTHENTICATOR_FILE"
STATE_DIR = "remote"
FILES = "files.tsv"
SEGMENTS = "segments.json"


def server_key(server: str) -> str:
    """A short stable directory name for a server URL."""
    return hashlib.sha256(server.encode()).hexdigest()[:16]


def _registry(server: str) -> Path:
    path = state_home() / "remote" / server_key(server)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_batch_dir(server: str, batch_id: int) -> Path:
    """Where a remote batch lives when the caller gives no ``batch_dir``."""
    return state_home() / "remote-batches" / server_key(server) / str(batch_id)


def registry_entry(server: str, batch_id: int) -> Path:
    """The registry file of remote batch ``batch_id`` (``retire`` removes it with the batch)."""
    return _registry(server) / f"{batch_id}.json"


def register(server: str, batch_id: int, batch_dir: Path) -> None:
    """Record ``batch_dir`` as the directory of remote batch ``batch_id``."""
    record = {"batch_id": batch_id, "server": server, "batch_dir": str(batch_dir.resolve())}
    protocol.atomic_write(registry_entry(server, batch_id), json.dumps(record).encode())


def locate(server: str, batch_id: int) -> Path:
    """The directory of remote batch ``batch_id`` on ``server``.

    Raises:
        BatchNotFoundError: no such batch in this machine's registry, or its directory is gone.
    """
    record = registry_entry(server, batch_id)
    try:
        return entry_dir(record, f"remote batch {batch_id}")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise BatchNotFoundError(
            f"no remote batch {batch_id} of {server} is registered on this machine (in "
            f"{record.parent}); check the ID and the server URL, or set BOINC_EXECUTOR_HOME "
            "to the one the batch was created under"
        ) from exc


def resolve_authenticator(authenticator: str | None) -> str:
    """``authenticator``, else ``$BOINC_EXECUTOR_AUTHENTICATOR``, else the file named by
    ``$BOINC_EXECUTOR_AUTHENTICATOR_FILE``.

    Raises:
        ConfigError: none of them gives a key, or the file cannot be read.
    """
    if authenticator:
        return authenticator.strip()
    if os.environ.get(ENV_AUTHENTICATOR):
        return os.environ[ENV_AUTHENTICATOR].strip()
    path = os.environ.get(ENV_AUTHENTICATOR_FILE)
    if path:
        try:
            key = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {ENV_AUTHENTICATOR_FILE}={path}: {exc.strerror}"
            ) from None
        if key:
            return key
        raise ConfigError(f"{ENV_AUTHENTICATOR_FILE}={path} names an empty file")
    raise ConfigError(
        "remote submission needs your account key: pass authenticator=, or set "
        f"{ENV_AUTHENTICATOR}, or {ENV_AUTHENTICATOR_FILE} to a file holding it"
    )


class RemoteState:
    """The ``BATCH_DIR/remote/`` files of one open batch.

    Args:
        batch_dir: the (open, locked) batch directory.
        anchor: the batch ID, i.e. the first segment.
    """

    def __init__(self, batch_dir: Path, anchor: int) -> None:
        self.dir = batch_dir / STATE_DIR
        self.dir.mkdir(exist_ok=True)
        self.files: dict[str, tuple[str, int]] = {}
        self._read_files()
        self.segments: list[int] = self._read_segments() or [anchor]
        if not (self.dir / SEGMENTS).exists():
            self._write_segments()

    def _read_files(self) -> None:
        path = self.dir / FILES
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BatchError(f"cannot read {path}: {exc}") from exc
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].isdigit():  # a torn last line is ignored
                self.files[parts[0]] = (parts[1], int(parts[2]))

    def _read_segments(self) -> list[int]:
        path = self.dir / SEGMENTS
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise BatchError(f"cannot read {path}: {exc}") from exc
        return [int(s) for s in data.get("segments", [])]

    def _write_segments(self) -> None:
        data = json.dumps({"segments": self.segments}).encode()
        protocol.atomic_write(self.dir / SEGMENTS, data, durable=True)

    def add_segment(self, batch_id: int) -> None:
        """Remember a new server batch before any job is submitted into it."""
        if batch_id not in self.segments:
            self.segments.append(batch_id)
            self._write_segments()

    def add_files(self, entries: list[tuple[str, str, int]]) -> None:
        """Append ``(name, jf_name, size)`` lines durably (before the jobs are journaled)."""
        if not entries:
            return
        lines = "".join(f"{n}\t{jf}\t{size}\n" for n, jf, size in entries)
        with (self.dir / FILES).open("a") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        for name, jf, size in entries:
            self.files[name] = (jf, size)
