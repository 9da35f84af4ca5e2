"""The embedded backend's batch registry: batch IDs, and where each batch lives.

``<state home>/registry/`` holds ``last_id`` (the last ID handed out, under a
file lock) and one ``<id>.json`` per batch: its name, directory and creation
time. ``BoincExecutor.resume(batch_id)`` and the command line find a local
batch from any directory through it. BOINC batches need none: their IDs and
directories are in the project's database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from .. import protocol
from ..config import state_home
from ..errors import BatchError, BatchNotFoundError

__all__ = ["entry_dir", "locate", "register", "registry_dir"]

logger = logging.getLogger("boinc_executor")


def registry_dir() -> Path:
    """``<state home>/registry``."""
    return state_home() / "registry"


def register(name: str, batch_dir: Path | None) -> tuple[int, Path]:
    """Allocate a batch ID and record the batch's directory in the registry.

    With an explicit ``batch_dir`` the registry is a convenience (it lets
    ``resume(batch_id)`` find the batch): if the state home is not writable,
    the batch gets an ID derived from its directory and is resumed by
    ``batch_dir`` instead.
    """
    import filelock  # here: the command line reads the registry without needing it

    registry = registry_dir()
    try:
        registry.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(registry / ".lock", timeout=30):
            counter = registry / "last_id"
            try:
                last = int(counter.read_text())
            except (FileNotFoundError, ValueError):
                last = 0
            batch_id = last + 1
            protocol.atomic_write(counter, str(batch_id).encode())
    except OSError as exc:
        if batch_dir is None:
            raise BatchError(
                f"cannot register a batch under {state_home()} ({exc}); set "
                "BOINC_EXECUTOR_HOME to a writable directory, or pass batch_dir"
            ) from exc
        path = batch_dir.resolve()
        batch_id = 1_000_000_000 + int(hashlib.sha256(str(path).encode()).hexdigest()[:8], 16)
        logger.warning(
            "cannot register batch %s in %s (%s); re-run with the same batch_dir to resume it",
            batch_id,
            registry,
            exc,
        )
        return batch_id, path
    path = batch_dir if batch_dir is not None else state_home() / "batches" / str(batch_id)
    record = {
        "batch_id": batch_id,
        "name": name,
        "batch_dir": str(path.resolve()),
        "created": time.time(),  # still known once the batch directory is gone
    }
    protocol.atomic_write(registry / f"{batch_id}.json", json.dumps(record).encode())
    return batch_id, path


def entry_dir(record: Path, what: str) -> Path:
    """The batch directory a registry entry names, if it still holds its checkpoint.

    Shared with the remote backend's registry (:mod:`.remote_state`).

    Raises:
        OSError, ValueError, KeyError: the entry is missing or unreadable.
        BatchNotFoundError: the directory no longer holds the batch (``what`` names it).
    """
    path = Path(json.loads(record.read_text())["batch_dir"])
    if not (path / protocol.CHECKPOINT).is_file():
        raise BatchNotFoundError(f"{what} was in {path}, which no longer holds its checkpoint")
    return path


def locate(batch_id: int) -> Path:
    """The directory of local batch ``batch_id``.

    Raises:
        BatchNotFoundError: no such batch in this state home, or its directory no
            longer holds its checkpoint; the message says which, and what to check.
    """
    record = registry_dir() / f"{batch_id}.json"
    try:
        return entry_dir(record, f"local batch {batch_id}")
    except (OSError, ValueError, KeyError) as exc:
        where = (
            f"the registry at {record.parent}"
            if record.parent.is_dir()
            else f"{state_home()}, which has no registry (no local batch was created there)"
        )
        raise BatchNotFoundError(
            f"no local batch {batch_id} in {where}; check the ID, or set "
            "BOINC_EXECUTOR_HOME to the state home it was created under"
        ) from exc
