"""Commands that look at batches: list, status, wait, results, errors, output.

They read batch directories through :class:`~boinc_executor.batchview.BatchView`
(no lock taken, nothing written, no code from a record run) and, for BOINC batches,
the project's database for where each work unit is. The commands that change
batches are in :mod:`.changes`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from typing import Any

from ..batchview import BatchView, JobRecord, call_output
from ..output import task_output
from ..progress import Progress, render_bar
from . import changes
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    batch_options,
    emit,
    fail,
    guarded,
)
from .locate import (
    BatchRef,
    MissingDependencyError,
    boinc_batches,
    boinc_database,
    boinc_job_states,
    find_batch,
    local_batches,
    local_running_jobs,
    project_root,
)

__all__ = ["counts", "register"]


def register(sub: Any) -> None:
    """Add the batch commands to the command line."""
    p = sub.add_parser(
        "list",
        help="the batches known here, with their counts",
        description=(
            "List the local registry's batches and, with --project or $PYBOINC_DIR, the "
            "BOINC project's: id, name, script, backend, created, counts by state, directory. "
            "A BOINC batch's counts here come from its directory alone (its jobs without "
            "a record count as queued); status ID asks the database which are running."
        ),
    )
    batch_options(p, batch_id=False)
    p.set_defaults(run=_list)

    p = sub.add_parser(
        "status",
        help="a batch's calls by state",
        description="Count a batch's calls by state; --watch follows them with a progress bar.",
    )
    batch_options(p)
    p.add_argument("--watch", action="store_true", help="live bar and ETA until done (^C stops)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds per update")
    p.set_defaults(run=_status)

    p = sub.add_parser(
        "wait",
        help="wait until every call of a batch is final",
        description="Wait for a batch. Exit status: 0 every call done, 1 a call failed or "
        "was cancelled, 2 the timeout passed first, 3 no such batch.",
    )
    batch_options(p)
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds per check")
    p.set_defaults(run=_wait)

    p = sub.add_parser(
        "results",
        help="the values, one JSON line per call",
        description=(
            "Print one JSON object per call, in call order: status (done, failed, "
            "pending, undecodable), and the value where JSON can hold it (else its type "
            "and repr). Payloads are decoded with the allow-list decoder only."
        ),
    )
    batch_options(p)
    p.set_defaults(run=_results)

    p = sub.add_parser(
        "errors",
        help="the failed calls: type, message, host (and traceback)",
        description="List the failed calls with their exception type, message and host.",
    )
    batch_options(p)
    p.add_argument("--traceback", action="store_true", help="show each remote traceback")
    p.set_defaults(run=_errors)

    p = sub.add_parser(
        "output",
        help="a call's captured stdout and stderr",
        description=(
            "Show what a call printed (the tails its record carries; the calls of one "
            "map chunk share their job's output)."
        ),
    )
    batch_options(p)
    p.add_argument("call", metavar="CALL", type=int, help="the call's index (submission order)")
    p.set_defaults(run=_output)

    changes.register(sub)


# --------------------------------------------------------------------------- helpers


def _find(args: argparse.Namespace) -> BatchRef:
    return find_batch(
        args.batch_id,
        project=args.project,
        local=args.local,
        batch_dir=args.batch_dir,
        server=args.server,
    )


def counts(ref: BatchRef, view: BatchView) -> tuple[Progress, str]:
    """The batch's counts, and a note when part of them could not be known.

    Jobs without a record are placed by the backend: the embedded backend's slots,
    or the BOINC database (running, failed, cancelled work units).
    """
    if ref.backend == "boinc" and ref.project is not None:
        try:
            states = boinc_job_states(ref.project, ref.batch_id)
        except MissingDependencyError as exc:
            return view.progress(), f"only the batch directory was read: {exc}"
        return view.progress(states.running, states.failed, states.cancelled), ""
    running = local_running_jobs(view.path) if view.owner() is not None else set()
    return view.progress(running), ""


def _when(created: float) -> str:
    if not created:
        return "?"
    return datetime.fromtimestamp(created, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _describe(ref: BatchRef) -> dict[str, Any]:
    return {
        "id": ref.batch_id,
        "backend": ref.backend,
        "name": ref.name,
        "script": ref.script,
        "created": ref.created,
        "directory": str(ref.path),
        "project": str(ref.project) if ref.project else None,
        "boinc_state": ref.state or None,
    }


def _gone(ref: BatchRef) -> str:
    hint = (
        "boinc-executor clean prunes such registry entries"
        if ref.backend == "local"
        else "an executor removes a batch directory it chose itself once every result "
        "was delivered; keep results with an explicit batch_dir"
    )
    return f"batch {ref.batch_id} was in {ref.path}, which no longer holds it (removed); {hint}"


# --------------------------------------------------------------------------- list


@guarded
def _list(args: argparse.Namespace) -> int:
    refs = local_batches()
    status = EXIT_OK
    root = project_root(args.project, local=args.local)
    if root is not None:
        try:
            refs += boinc_batches(root)
        except MissingDependencyError as exc:
            status = fail(args.command, str(exc), EXIT_MISSING_DEPENDENCY)
    rows: list[dict[str, Any]] = []
    for ref in refs:
        row = _describe(ref)
        row["counts"] = _list_counts(ref)
        rows.append(row)
    lines = [f"{'ID':>5}  {'BACKEND':7}  {'NAME':16}  {'CREATED':20}  {'COUNTS':32}  DIRECTORY"]
    for row in rows:
        c = row["counts"]
        summary = f"{c['done']}/{c['total']} done, {c['failed']} failed" if c else "gone"
        name = row["name"] or (row["script"] and row["script"].rsplit("/", 1)[-1]) or "-"
        lines.append(
            f"{row['id']:>5}  {row['backend']:7}  {name[:16]:16}  "
            f"{_when(row['created']):20}  {summary[:32]:32}  {row['directory']}"
        )
    if len(lines) == 1:
        lines = ["no batches here (local registry: empty)"]
    emit(args, rows, "\n".join(lines))
    return status


def _list_counts(ref: BatchRef) -> dict[str, int] | None:
    """A listed batch's counts; BOINC ones from their directories alone (no query per batch)."""
    if not ref.exists:
        return None
    view = ref.view()
    progress = counts(ref, view)[0] if ref.backend == "local" else view.progress()
    return progress.as_dict()


# --------------------------------------------------------------------------- status / wait


def _status_text(ref: BatchRef, view: BatchView, progress: Progress, note: str) -> str:
    owner = view.owner()
    lines = [
        f"batch {ref.batch_id} ({ref.backend}) in {ref.path}",
        f"  name: {ref.name or '-'}   script: {ref.script or '-'}   created: {_when(ref.created)}",
        "  open by: " + (owner.text if owner else "nobody (no executor runs it now)"),
        f"  calls: {progress.total} total, {progress.queued} queued, {progress.running} "
        f"running, {progress.done} done, {progress.failed} failed, "
        f"{progress.cancelled} cancelled",
    ]
    if ref.state:
        lines.append(f"  BOINC batch state: {ref.state}")
    if note:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


@guarded
def _status(args: argparse.Namespace) -> int:
    ref = _find(args)
    if not ref.exists:
        return fail(args.command, _gone(ref), EXIT_NOT_FOUND)
    view = ref.view()
    progress, note = counts(ref, view)
    if not args.watch:
        stuck = _stuck(ref) if not note else None
        data = dict(
            _describe(ref), counts=progress.as_dict(), open_by=_owner_text(view), stuck=stuck
        )
        text = _status_text(ref, view, progress, note)
        emit(args, data, text + (f"\n  STUCK: {stuck}" if stuck else ""))
        return EXIT_OK
    start = time.monotonic()
    first = progress.finished
    try:
        while True:
            elapsed = time.monotonic() - start
            line = render_bar(progress, elapsed=elapsed, finished_before=first)
            if args.json:
                print(json.dumps(dict(progress.as_dict(), elapsed=round(elapsed, 1))), flush=True)
            else:
                sys.stdout.write("\r" + line + "\033[K")
                sys.stdout.flush()
            if progress.complete and progress.total and view.owner() is None:
                break
            time.sleep(args.interval)
            if not ref.exists:
                print()
                return fail(args.command, _gone(ref), EXIT_NOT_FOUND)
            progress, note = counts(ref, view)
    except KeyboardInterrupt:
        print()
        print(f"stopped watching; batch {ref.batch_id} is left as it is", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.json:
        print()
    return EXIT_OK


def _stuck(ref: BatchRef) -> str | None:
    """On BOINC: why the batch does not move (which daemon lets it wait), or None."""
    if ref.backend != "boinc" or ref.project is None:
        return None
    from ..backends.stuck import Thresholds, diagnose

    with boinc_database(ref.project) as db:
        return diagnose(db, ref.project, ref.batch_id, Thresholds.for_project(ref.project))


def _owner_text(view: BatchView) -> str | None:
    owner = view.owner()
    return owner.text if owner else None


@guarded
def _wait(args: argparse.Namespace) -> int:
    ref = _find(args)
    if not ref.exists:
        return fail(args.command, _gone(ref), EXIT_NOT_FOUND)
    view = ref.view()
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    settled = 0
    while True:
        progress, _ = counts(ref, view)
        finished = progress.complete and progress.total > 0
        # An executor that still holds the batch may hand over more calls: wait until
        # it lets go, or until the counts stay complete for a few checks.
        settled = settled + 1 if finished else 0
        if finished and (view.owner() is None or settled >= 3):
            break
        if deadline is not None and time.monotonic() >= deadline:
            emit(
                args,
                dict(progress.as_dict(), outcome="timeout"),
                f"batch {ref.batch_id}: timed out with {progress.finished} of "
                f"{progress.total} calls final",
            )
            return EXIT_TIMEOUT
        pause = (
            args.interval
            if deadline is None
            else min(args.interval, max(0.0, deadline - time.monotonic()))
        )
        time.sleep(pause)
        if not ref.exists:
            return fail(args.command, _gone(ref), EXIT_NOT_FOUND)
    ok = progress.failed == 0 and progress.cancelled == 0
    emit(
        args,
        dict(progress.as_dict(), outcome="done" if ok else "failed"),
        f"batch {ref.batch_id}: {progress.done} done, {progress.failed} failed, "
        f"{progress.cancelled} cancelled of {progress.total}",
    )
    return EXIT_OK if ok else EXIT_FAILED


# --------------------------------------------------------------------------- results / errors


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def _value_line(call: int, value: Any) -> dict[str, Any]:
    if _jsonable(value):
        return {"call": call, "status": "done", "value": value}
    if isinstance(value, (tuple, set, frozenset)) and _jsonable(list(value)):
        return {"call": call, "status": "done", "value": list(value), "type": type(value).__name__}
    return {
        "call": call,
        "status": "done",
        "type": type(value).__qualname__,
        "repr": repr(value)[:1000],
    }


@guarded
def _results(args: argparse.Namespace) -> int:
    ref = _find(args)
    if not ref.exists:
        return fail(args.command, _gone(ref), EXIT_NOT_FOUND)
    view = ref.view()
    records = view.records()
    for entry in sorted(view.journal().values(), key=lambda e: e.call):
        record = records.get(entry.job)
        for line in _job_lines(view, entry.call, entry.n, record):
            print(json.dumps(line, sort_keys=True))
    return EXIT_OK


def _job_lines(
    view: BatchView, first: int, n: int, record: JobRecord | None
) -> list[dict[str, Any]]:
    calls = range(first, first + n)
    if record is None:
        return [{"call": c, "status": "pending"} for c in calls]
    if not record.ok:
        info = record.error or {}
        status = "cancelled" if record.cancelled else "failed"
        return [{"call": c, "status": status, "error": _brief(info)} for c in calls]
    outcomes = view.outcomes(record, n)
    if outcomes is None:
        why = "its record holds types outside the allow-list, or is corrupt"
        return [{"call": c, "status": "undecodable", "reason": why} for c in calls]
    return [
        _value_line(c, value) if ok else {"call": c, "status": "failed", "error": _brief(value)}
        for c, (ok, value) in zip(calls, outcomes, strict=True)
    ]


def _brief(info: Any) -> dict[str, str]:
    info = info if isinstance(info, dict) else {}
    return {"type": str(info.get("type", "")), "message": str(info.get("message", ""))}


@guarded
def _errors(args: argparse.Namespace) -> int:
    ref = _find(args)
    if not ref.exists:
        return fail(args.command, _gone(ref), EXIT_NOT_FOUND)
    errors, undecodable = ref.view().call_errors()
    rows = []
    lines = []
    for e in errors:
        row = {"call": e.call, "job": e.job, "type": e.type, "message": e.message, "host": e.host}
        if args.traceback:
            row["traceback"] = e.traceback
        rows.append(row)
        lines.append(f"call {e.call} (job {e.job}) on {e.host or '?'}: {e.type}: {e.message}")
        if args.traceback and e.traceback:
            lines.append("  " + e.traceback.rstrip().replace("\n", "\n  "))
    for job in undecodable:
        print(
            f"boinc-executor errors: the calls of job {job} could not be read (types outside "
            "the allow-list, or a corrupt record); see them in the script with trusted_types",
            file=sys.stderr,
        )
    emit(args, rows, "\n".join(lines) if lines else f"batch {ref.batch_id}: no failed calls")
    return EXIT_OK


@guarded
def _output(args: argparse.Namespace) -> int:
    ref = _find(args)
    if not ref.exists:
        return fail(args.command, _gone(ref), EXIT_NOT_FOUND)
    view = ref.view()
    entry, record = call_output(view, args.call)
    if record is None:
        return fail(
            args.command,
            f"call {args.call} (job {entry.job}) has not finished: no output yet",
            EXIT_FAILED,
        )
    # The call's own output where the record carries it per call; else the job's tails.
    own = task_output(view.path, args.call)
    stdout, stderr = (own.stdout, own.stderr) if own is not None else (record.stdout, record.stderr)
    data = {"call": args.call, "job": entry.job, "host": record.host, "stdout": stdout,
            "stderr": stderr}  # fmt: skip
    text = (
        f"call {args.call} (job {entry.job}) on {record.host or '?'}\n"
        f"--- stdout ---\n{stdout}"
        + ("" if stdout.endswith("\n") or not stdout else "\n")
        + f"--- stderr ---\n{stderr}"
    )
    emit(args, data, text.rstrip("\n"))
    return EXIT_OK
