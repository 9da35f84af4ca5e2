"""Operations on a remote batch from outside a running executor: retire, abort.

For the operations CLI (``boinc-executor retire``): a remote batch may have been
filled in several server batches (segments, see :mod:`.remote_state`); these
functions act on every one of them. The batch directory is found through this
machine's registry, or given; it is only read, so it may be in use by an executor.
"""

from __future__ import annotations

from pathlib import Path

from .remote_rpc import RemoteRpcError, RpcClient
from .remote_state import STATE_DIR, RemoteState, locate, resolve_authenticator
from .remote_wire import normalise_server

__all__ = ["abort_remote_batch", "remote_segments", "retire_remote_batch"]


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
