"""Commands that change batches: ``cancel``, ``retire`` (alias ``remove``) and ``clean``.

Each asks for confirmation on a terminal, or takes ``--yes``.

* ``cancel`` on BOINC cancels the batch's unsent work units as ``bin/cancel_jobs``
  does; the executor (now, or at its next run) learns of them as it learns of any
  cancelled work unit. On a remote batch it does the same over the web RPCs: the
  jobs no volunteer has been sent are aborted with ``abort_jobs``. On the embedded
  backend it delivers a cancellation record (a ``WorkunitError`` with BOINC's
  cancelled bit, tag ``cancelled``) for every job no worker has started, so the
  futures fail at once and a re-run or ``resume`` does not run them. When a script
  holds the batch open, the command returns once that script has taken the
  cancellations, so none of those jobs starts after it; one a local worker had
  already queued may still run, and its late record is set aside as a duplicate.
* ``retire`` on BOINC does what BOINC's ``retire_batch`` does (boinc-facts §4,
  §10.5): unsent work units are cancelled and marked for file deletion, the batch
  row gets state 4 (retired); then the batch directory is removed. A remote batch
  (``--server``) is retired with the ``retire_batch`` RPC itself, every server
  batch (segment) of it, before its directory and registry entry go; the server's
  ``purge-remote-outputs`` then frees its kept outputs. Locally it removes the
  directory and the registry entry. A batch an executor holds open is
  refused: stop that script first (^C keeps the batch).
* ``clean`` prunes registry entries whose directories are gone and, with
  ``--older-than``, removes local batches that are complete and older than that.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..batchview import BatchView
from .common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    batch_options,
    confirm,
    emit,
    fail,
    guarded,
)
from .locate import (
    BatchRef,
    boinc_database,
    boinc_job_states,
    find_batch,
    local_batches,
    local_running_jobs,
    remove_directory,
)

if TYPE_CHECKING:
    import filelock

__all__ = ["register"]

_RETIRED = 4  # batch.state (boinc-facts §10.3.3)
_FILE_DELETE_READY = 1  # workunit.file_delete_state
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}


def register(sub: Any) -> None:
    """Add ``cancel``, ``retire``/``remove`` and ``clean`` to the command line."""
    p = sub.add_parser(
        "cancel",
        help="cancel every job of a batch that has not started",
        description=(
            "Cancel every job that has not started. On BOINC the unsent work units are "
            "cancelled as bin/cancel_jobs does, remotely (--server) with abort_jobs; "
            "running ones run on."
        ),
    )
    batch_options(p)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=_cancel)
    for name in ("retire", "remove"):
        p = sub.add_parser(
            name,
            help="cancel the rest of a batch, retire it and remove its directory"
            + (" (same as retire)" if name == "remove" else ""),
            description=(
                "On BOINC: cancel the unsent work units, mark the batch retired as "
                "retire_batch does, and remove its directory. Remote (--server): call "
                "retire_batch on the server for every part of the batch, then remove "
                "its directory. Locally: remove the directory and the registry entry."
            ),
        )
        batch_options(p)
        p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
        p.set_defaults(run=_retire)
    p = sub.add_parser(
        "clean",
        help="prune registry entries of removed batches, and old complete ones",
        description=(
            "Prune local registry entries whose batch directories are gone; with "
            "--older-than AGE also remove local batches that are complete, not open, and "
            "older than AGE (e.g. 30d, 12h, 90m; a bare number is days)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--older-than", metavar="AGE", type=_age, help="also remove old complete batches"
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=_clean)


def _age(text: str) -> float:
    match = _AGE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected an age like 30d, 12h, 90m or 45s, got {text!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


def _find(args: argparse.Namespace) -> BatchRef:
    return find_batch(
        args.batch_id,
        project=args.project,
        local=args.local,
        batch_dir=args.batch_dir,
        server=args.server,
    )


# --------------------------------------------------------------------------- cancel


@guarded
def _cancel(args: argparse.Namespace) -> int:
    ref = _find(args)
    if not ref.exists:
        return fail(args.command, f"batch {ref.batch_id}: {ref.path} is gone", EXIT_NOT_FOUND)
    view = ref.view()
    records = view.records()
    pending = [e.job for e in view.journal().values() if e.job not in records]
    if ref.backend == "boinc" and ref.project is not None:
        unsent = sorted(boinc_job_states(ref.project, ref.batch_id).unsent)
        targets = unsent
    elif ref.backend == "remote":
        from ..backends.remote_ops import cancel_remote_jobs, unstarted_remote_jobs

        targets = unstarted_remote_jobs(ref.batch_id, server=ref.server, batch_dir=ref.path)
    else:
        started = local_running_jobs(view.path) if view.owner() is not None else set()
        targets = sorted(set(pending) - started)
    if not targets:
        emit(
            args,
            {"batch": ref.batch_id, "cancelled": 0},
            f"batch {ref.batch_id}: no job waits to start; nothing to cancel",
        )
        return EXIT_OK
    if not confirm(
        args, f"Cancel {len(targets)} jobs of batch {ref.batch_id} that have not started?"
    ):
        return EXIT_FAILED
    if ref.backend == "boinc" and ref.project is not None:
        with boinc_database(ref.project) as db:
            done = db.cancel_workunits(targets)
        note = ""
    elif ref.backend == "remote":
        done = cancel_remote_jobs(targets, server=ref.server)
        note = f" on {ref.server}"
    else:
        done = _deliver_cancellations(view, targets)
        note = _await_pickup(view, targets)
    emit(
        args,
        {"batch": ref.batch_id, "cancelled": done},
        f"batch {ref.batch_id}: cancelled {done} jobs{note}",
    )
    return EXIT_OK


def _await_pickup(view: BatchView, jobs: list[str], timeout: float = 30.0) -> str:
    """Wait until the script holding the batch open has taken the cancellations.

    Its collector claims them at its next scan of ``new/`` (every half second
    when idle) and drops the jobs from its workers' queue; until then a worker
    could start one. Waiting makes "cancelled" true when this command returns.
    Returns a note for the user when the owner is slow, else "".
    """
    owner = view.owner()
    if owner is None:
        return ""  # the next run or resume() reads them before it runs anything
    new = view.path / protocol.NEW
    names = [protocol.record_file_name(job, protocol.CANCEL_TAG) for job in jobs]
    deadline = time.monotonic() + timeout
    while True:
        waiting = [name for name in names if (new / name).exists()]
        if not waiting or view.owner() is None:
            return ""
        if time.monotonic() >= deadline:
            return (
                f"; {owner.text} has not taken {len(waiting)} of them yet, "
                "so its workers may still start those"
            )
        time.sleep(0.1)


def _deliver_cancellations(view: BatchView, jobs: list[str]) -> int:
    for job in jobs:
        info = protocol.failure_info(
            "WorkunitError",
            f"job {job} was cancelled with 'boinc-executor cancel' before it started",
            error_mask=16,
        )
        info["host"] = ""
        record = protocol.encode_error_record(job, info, source="cli")
        protocol.deliver_record(view.path, job, protocol.CANCEL_TAG, record)
    return len(jobs)


# --------------------------------------------------------------------------- retire / remove


def _holding(path: Path) -> filelock.BaseFileLock:
    """Take the batch lock for the removal, so no executor opens the batch meanwhile."""
    import filelock  # here, not at import: see boinc_executor.batchview.BatchView.journal

    return filelock.FileLock(path / protocol.LOCK, timeout=0, thread_local=False)


@guarded
def _retire(args: argparse.Namespace) -> int:
    ref = _find(args)
    owner = ref.view().owner() if ref.exists else None
    if owner is not None:
        return fail(
            args.command,
            f"batch {ref.batch_id} is open by {owner.text}; stop that script first "
            "(^C keeps the batch), then run this again",
        )
    if ref.backend == "boinc":
        what = "retire batch {0} (cancel its unsent jobs) and remove {1}"
    elif ref.backend == "remote":
        what = "retire batch {0} on " + ref.server + " (cancel its unsent jobs) and remove {1}"
    else:
        what = "remove batch {0} and its directory {1}"
    if not confirm(args, what.format(ref.batch_id, ref.path).capitalize() + "?"):
        return EXIT_FAILED
    cancelled = 0
    note = ""
    data: dict[str, Any] = {}
    if ref.backend == "boinc" and ref.project is not None:
        cancelled = _retire_on_boinc(ref)
        note = f"; retired on BOINC, {cancelled} unsent jobs cancelled"
    elif ref.backend == "remote":
        # Before the directory goes: a server that refuses or is down keeps it for a retry.
        from ..backends.remote_ops import retire_remote_batch

        segments = retire_remote_batch(ref.batch_id, server=ref.server, batch_dir=ref.path)
        data["retired"] = segments
        note = f"; retired on {ref.server} (server batches {_ids_of(segments) or 'none left'})"
    if ref.exists:
        try:
            with _holding(ref.path):
                remove_directory(ref.path)
        except TimeoutError:  # filelock.Timeout
            return fail(args.command, f"batch {ref.batch_id} was opened meanwhile; not removed")
    if ref.registry_file is not None:
        ref.registry_file.unlink(missing_ok=True)
    emit(
        args,
        {"batch": ref.batch_id, "removed": str(ref.path), "cancelled": cancelled, **data},
        f"batch {ref.batch_id}: removed {ref.path}{note}",
    )
    return EXIT_OK


def _retire_on_boinc(ref: BatchRef) -> int:
    assert ref.project is not None
    unsent = sorted(boinc_job_states(ref.project, ref.batch_id).unsent)
    with boinc_database(ref.project) as db:
        cancelled = db.cancel_workunits(unsent) if unsent else 0
        if unsent:
            db.execute(
                "UPDATE workunit SET file_delete_state=%s WHERE batch=%s AND error_mask&16<>0 "
                "AND file_delete_state=0",
                (_FILE_DELETE_READY, ref.batch_id),
                doing="marking the cancelled jobs' files for deletion",
            )
        db.execute(
            "UPDATE batch SET state=%s WHERE id=%s",
            (_RETIRED, ref.batch_id),
            doing="retiring the batch",
        )
    return cancelled


# --------------------------------------------------------------------------- clean


@guarded
def _clean(args: argparse.Namespace) -> int:
    refs = local_batches()
    prune = [r for r in refs if not r.exists]
    remove: list[BatchRef] = []
    if args.older_than is not None:
        cutoff = time.time() - args.older_than
        for ref in refs:
            if not ref.exists or not ref.created or ref.created > cutoff:
                continue
            view = ref.view()
            progress = view.progress()
            if view.owner() is None and progress.complete:
                remove.append(ref)
    if not prune and not remove:
        emit(args, {"pruned": [], "removed": []}, "nothing to clean")
        return EXIT_OK
    question = (
        f"Prune {len(prune)} registry entries of removed batches"
        + (f" and remove {len(remove)} complete batches ({_ids(remove)})" if remove else "")
        + "?"
    )
    if not confirm(args, question):
        return EXIT_FAILED
    removed = []
    for ref in remove:
        try:
            with _holding(ref.path):
                remove_directory(ref.path)
        except TimeoutError:  # filelock.Timeout
            continue  # opened meanwhile: it is in use, keep it
        removed.append(ref)
    for ref in prune + removed:
        if ref.registry_file is not None:
            ref.registry_file.unlink(missing_ok=True)
    data = {"pruned": [r.batch_id for r in prune], "removed": [r.batch_id for r in removed]}
    emit(args, data, f"pruned {len(prune)} registry entries; removed {len(removed)} batches")
    return EXIT_OK


def _ids(refs: list[BatchRef]) -> str:
    return _ids_of(r.batch_id for r in refs)


def _ids_of(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids)
