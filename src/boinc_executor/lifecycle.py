"""A batch's life around the executor: which directory it opens, what happens at the end.

Design note. The batch contract, in one place:

* **Opening.** An explicit ``batch_dir`` (or ``$BOINC_EXECUTOR_BATCH_DIR``) is used
  as it is. Without one, the running script owns the batch
  (:mod:`boinc_executor.ownership`): its claimed batch is replayed if it is still
  there, else a new batch is created and claimed. The checkpoint records
  ``script`` and ``name`` either way.
* **Ending normally** (``shutdown`` or leaving a ``with`` block without an
  interrupt) with every journaled call resolved: the claim is dropped, so the
  next run starts fresh, and a directory the executor chose itself is removed,
  unless calls failed: then it is kept for ``resume(batch_id, retry_failed=True)``.
* **Interrupted** (^C, SIGTERM, ``SystemExit`` with work outstanding): nothing is
  cancelled, nothing removed, the claim stays, and one line on stderr says where
  the batch is (:func:`boinc_executor.interrupts.tell_kept`).
* **Ending with an exception** (the ``with`` block raised, or the script died of an
  uncaught one): the executor waits as ``ProcessPoolExecutor`` does, but the
  results are what the script never got to use, so the batch and its claim stay
  (:attr:`Opened.kept_for`) and the fixed script's next run replays them.
* **Replaying and retrying** are in :mod:`boinc_executor.replay`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import protocol
from .backends.base import Backend, BackendEvents
from .batch import BatchDir, Checkpoint
from .errors import BatchError, BatchLockedError, ConfigError
from .ownership import Claim, owner_for, release_batch, running_script
from .replay import finished_jobs

__all__ = ["Opened", "discard_batch", "open_batch", "when_finished"]

logger = logging.getLogger("boinc_executor")


@dataclass
class Opened:
    """An opened batch directory and how it was chosen.

    Attributes:
        batch: the open, locked directory.
        checkpoint: its checkpoint.
        chosen: the backend chose the directory (no ``batch_dir`` was given when
            the batch was created; ``resume`` of such a batch counts too).
        claim: the script's claim on it, if this run took it by the claim.
        root: the backend's batch root, where the claims live.
        kept_for: why the batch must outlive its completion ("" if it need not),
            set by the executor when the script ends with an exception.
    """

    batch: BatchDir
    checkpoint: Checkpoint
    chosen: bool
    claim: Claim | None
    root: Path
    kept_for: str = ""


def open_batch(
    backend: Backend,
    explicit: str | os.PathLike[str] | None,
    name: str | None,
    prefix: str,
    project_dir: Path | None,
) -> Opened:
    """Open the batch an executor uses (see the module docstring).

    Raises:
        BatchError: the directory is unusable or locked.
        ConfigError: it holds a batch of the other backend.
    """
    label = name or _script_stem()
    owner = owner_for(name) if explicit is None else None
    claim = Claim(backend.batch_root, owner) if owner is not None else None
    batch, busy = _claimed(backend, claim) if claim is not None else (None, False)
    if batch is None and explicit is None:
        batch_id, path = backend.create_batch(label, None)
        batch = BatchDir(path)
        fresh: int | None = batch_id
    elif batch is None:
        batch = BatchDir(Path(explicit).expanduser())  # type: ignore[arg-type]
        fresh = None
    else:
        fresh = None
    try:
        checkpoint = batch.read_checkpoint()
        if checkpoint is None:
            if fresh is None:
                fresh, _ = backend.create_batch(label, batch.path)
            checkpoint = Checkpoint(
                fresh,
                backend.kind,
                prefix,
                # remote: the server's URL stands where a project directory would
                getattr(backend, "server", None) or (str(project_dir) if project_dir else None),
                time.time(),
                script=(owner.script if owner else running_script()) or "",
                name=label,
            )
            batch.write_checkpoint(checkpoint)
            if claim is not None and not busy:
                _write_claim(claim, checkpoint.batch_id, batch.path)
        elif checkpoint.backend != backend.kind:
            raise ConfigError(
                f"{batch.path} holds a {checkpoint.backend} batch, but this executor runs on "
                f"the {backend.kind} backend; "
                + (
                    f"set server={checkpoint.project_dir!r}"
                    if checkpoint.backend == "remote"
                    else f"set project_dir={checkpoint.project_dir!r}"
                    if checkpoint.project_dir
                    else "unset project_dir and PYBOINC_DIR"
                )
                + ", or use another batch_dir"
            )
    except BaseException:
        batch.close()
        raise
    own_dir = (backend.batch_root / str(checkpoint.batch_id)).resolve()
    chosen = explicit is None or batch.path == own_dir
    return Opened(batch, checkpoint, chosen, None if busy else claim, backend.batch_root)


def _claimed(backend: Backend, claim: Claim) -> tuple[BatchDir | None, bool]:
    """The claimed batch, opened, if it is still there; and whether another run holds it."""
    claimed = claim.read()
    if claimed is None:
        return None, False
    batch_id, path = claimed
    if not (path / protocol.CHECKPOINT).is_file():
        return None, False  # completed elsewhere or removed by hand: start afresh
    try:
        batch = BatchDir(path)
    except BatchLockedError as exc:
        logger.warning(
            "%s; this run uses a fresh batch (pass name= to tell concurrent runs apart)", exc
        )
        return None, True
    checkpoint = batch.read_checkpoint()
    if checkpoint is None or checkpoint.batch_id != batch_id or checkpoint.backend != backend.kind:
        batch.close()
        return None, False
    return batch, False


def _write_claim(claim: Claim, batch_id: int, path: Path) -> None:
    try:
        claim.write(batch_id, path)
    except OSError as exc:
        logger.warning(
            "cannot record batch %d as the batch of %s in %s: %s",
            batch_id,
            claim.owner.script or claim.owner.name,
            claim.path.parent,
            exc,
        )


def when_finished(opened: Opened) -> Callable[[bool, bool, int], None]:
    """The collector's end-of-batch callback: release the claim, keep or remove the directory."""
    batch_id = opened.checkpoint.batch_id
    path = opened.batch.path

    def finished(complete: bool, abandoned: bool, failed: int) -> None:
        if abandoned or not complete:
            return  # the batch stays, claimed: the next run replays it
        if opened.kept_for:
            if opened.chosen:
                logger.warning(
                    "batch %d is kept in %s: %s; run the script again to replay its results, "
                    "or BoincExecutor.resume(%d)",
                    batch_id,
                    path,
                    opened.kept_for,
                    batch_id,
                )
            return
        if opened.claim is not None:
            opened.claim.release(batch_id)
        elif opened.checkpoint.script or opened.checkpoint.name:
            release_batch(opened.root, batch_id)  # resumed by ID: the script's claim ends too
        if not opened.chosen:
            return
        if failed:
            logger.warning(
                "batch %d is kept in %s: %d calls failed; BoincExecutor.resume(%d, "
                "retry_failed=True) runs them again, BoincExecutor.discard(%d) removes the batch",
                batch_id,
                path,
                failed,
                batch_id,
                batch_id,
            )
            return
        shutil.rmtree(path, ignore_errors=True)

    return finished


def _script_stem() -> str:
    script = running_script()
    return Path(script).stem if script else "interactive"


def discard_batch(backend: Backend, batch_id: int) -> Path:
    """Cancel a batch's unfinished jobs, drop its claims and delete its directory.

    Raises:
        BatchNotFoundError: no such batch.
        BatchLockedError: an executor is using it.
    """
    path = backend.locate_batch(batch_id)
    batch = BatchDir(path)
    try:
        checkpoint = batch.read_checkpoint()
        if checkpoint is None or checkpoint.batch_id != batch_id:
            raise BatchError(f"{path} does not hold batch {batch_id}; nothing was removed")
        done = finished_jobs(batch)
        unfinished = [e.job for e in batch.read_journal().values() if e.job not in done]
        backend.attach(
            batch, checkpoint, BackendEvents(lambda _job: None, lambda: None, lambda _name: None)
        )
        try:
            if unfinished:
                backend.cancel(unfinished)
        finally:
            backend.close(complete=True)
    finally:
        batch.close()
    release_batch(backend.batch_root, batch_id)
    shutil.rmtree(path, ignore_errors=True)
    logger.info("discarded batch %d (%s)", batch_id, path)
    return path
