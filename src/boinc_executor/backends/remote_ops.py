"""Operations on a remote batch from outside a running executor: retire, abort, cancel.

For the operations CLI (``boinc-executor retire``, ``cancel``): a remote batch may have been
filled in several server batches (segments, see :mod:`.remote_state`); these
functions act on every one of them. The batch directory is found through this
machine's registry, or given; it is only read, so it may be in use by an executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .remote_rpc import RemoteRpcError, RpcClient
from .remote_state import STATE_DIR, RemoteState, locate, resolve_authenticator
from .remote_wire import normalise_server

__all__ = [
    "abort_remote_batch",
    "cancel_remote_jobs",
    "remote_segments",
    "retire_remote_batch",
    "unstarted_remote_jobs",
]

_NOT_SENT = ("unsent", "inactive")  # query_job instance states before a volunteer has it
_ABORT_CHUNK = 500  # job names per abort_jobs request


def remote_segments(batch_id: int, server: str, batch_dir: Path | None = None) -> list[int]:
    """The server batches holding remote batch ``batch_id``'s jobs.

    Args:
        batch_id: the batch ID (its first segment).
        server: the master URL.
        batch_dir: the batch directory; default: the one this machine's registry names.

    Raises:
        BatchNotFoundError: no ``batch_dir`` given and the batch is not registered here.
    """
    path = batch_dir if batch_dir is not None else locate(normalise_server(server), batch_id)
    if not (path / STATE_DIR).is_dir():
        return [batch_id]
    return RemoteState(path, batch_id).segments


def retire_remote_batch(
    batch_id: int,
    *,
    server: str,
    authenticator: str | None = None,
    batch_dir: Path | None = None,
) -> list[int]:
    """Retire every segment with ``retire_batch`` (§10.5.4); returns the segments retired.

    The server then forgets the batch; ``purge-remote-outputs`` on the server frees
    its outputs. Already retired segments are skipped.

    ``authenticator`` defaults as for the executor (``$BOINC_EXECUTOR_AUTHENTICATOR``,
    then the file named by ``$BOINC_EXECUTOR_AUTHENTICATOR_FILE``); ``batch_dir`` as
    for :func:`remote_segments`.

    Raises:
        BatchNotFoundError: the batch is not registered on this machine.
        ConfigError: no authenticator.
        RemoteSubmitError: the server refused (bad key, not the owner) or is unreachable.
    """
    rpc = RpcClient(server, resolve_authenticator(authenticator))
    done = []
    for segment in remote_segments(batch_id, rpc.server, batch_dir):
        if rpc.query_batch(segment).state != 4:
            rpc.retire_batch(segment)
            done.append(segment)
    return done


def abort_remote_batch(
    batch_id: int,
    *,
    server: str,
    authenticator: str | None = None,
    batch_dir: Path | None = None,
) -> list[int]:
    """Cancel every job of every segment with ``abort_batch`` (§10.5.3).

    ``authenticator`` and ``batch_dir`` default as for :func:`retire_remote_batch`.

    Raises:
        BatchNotFoundError: the batch is not registered on this machine.
        RemoteSubmitError: the server refused or is unreachable.
    """
    rpc = RpcClient(server, resolve_authenticator(authenticator))
    done = []
    for segment in remote_segments(batch_id, rpc.server, batch_dir):
        try:
            rpc.abort_batch(segment)
        except RemoteRpcError:
            if rpc.query_batch(segment).state < 3:
                raise
            continue  # already aborted or retired
        done.append(segment)
    return done


def unstarted_remote_jobs(
    batch_id: int,
    *,
    server: str,
    authenticator: str | None = None,
    batch_dir: Path | None = None,
) -> list[str]:
    """The jobs of every segment no volunteer has been sent yet, by name.

    query_batch's ``queued`` also covers a job whose result was reported and
    awaits validation (§10.3.2), so each queued job's instances are asked for
    (``query_job``): a job is unstarted only while every instance is "Unsent" or
    "Inactive" (html/inc/result.inc ``state_string``), or it has none yet.
    ``authenticator`` and ``batch_dir`` default as for :func:`retire_remote_batch`.

    Raises:
        BatchNotFoundError: the batch is not registered on this machine.
        RemoteSubmitError: the server refused or is unreachable.
    """
    rpc = RpcClient(server, resolve_authenticator(authenticator))
    names = []
    for segment in remote_segments(batch_id, rpc.server, batch_dir):
        for job in rpc.query_batch(segment).jobs:
            if job.status != "queued" or job.canonical_instance_id:
                continue
            states = [state.lower() for _, _, state in rpc.query_job(job.id)]
            if all(state in _NOT_SENT for state in states):
                names.append(job.name)
    return names


def cancel_remote_jobs(
    names: Sequence[str], *, server: str, authenticator: str | None = None
) -> int:
    """Cancel jobs on the server with ``abort_jobs`` (§10.5.1); returns how many.

    Every name must be one the server has: a single unknown name fails the whole
    request. A job sent meanwhile is marked cancelled but runs on (§10.5.2).

    Raises:
        RemoteSubmitError: the server refused or is unreachable.
    """
    rpc = RpcClient(server, resolve_authenticator(authenticator))
    for start in range(0, len(names), _ABORT_CHUNK):
        rpc.abort_jobs(names[start : start + _ABORT_CHUNK])
    return len(names)
