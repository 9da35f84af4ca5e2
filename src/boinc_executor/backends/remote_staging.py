"""Staging inputs for the remote backend: ``query_files`` first, then ``upload_files``.

Every input is uploaded under its content-addressed name ``jf_<md5>``. Only the
files ``query_files`` reports absent are uploaded, because uploading a file the
server already has crashes job_file.php (boinc-facts §10.1.7), and in requests
within PHP's defaults: at most 20 files, 2 MB per file, 8 MB per request
(§10.1.10). No ``<batch_id>`` is sent (§10.1.8).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from .remote_rpc import RemotePhpError, RemoteUnavailableError, RpcClient

__all__ = [
    "MAX_FILES_PER_UPLOAD",
    "MAX_FILE_BYTES",
    "MAX_REQUEST_BYTES",
    "absent",
    "chunks",
    "upload",
]

logger = logging.getLogger("boinc_executor")

# PHP's defaults (§10.1.10): max_file_uploads, upload_max_filesize, post_max_size.
MAX_FILES_PER_UPLOAD = 20
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_REQUEST_BYTES = 8 * 1024 * 1024
_REQUEST_SLACK = 64 * 1024  # multipart headers and the request XML
_QUERY_CHUNK = 1000  # names per query_files


def absent(rpc: RpcClient, names: Sequence[str]) -> list[str]:
    """The names among ``names`` that the server does not have."""
    absent: list[str] = []
    for start in range(0, len(names), _QUERY_CHUNK):
        absent += rpc.query_files(list(names[start : start + _QUERY_CHUNK]))
    return absent


def upload(rpc: RpcClient, files: dict[str, bytes]) -> None:
    """query_files, then upload_files of the absent ones in chunks within PHP's limits.

    A failed or crashed upload is followed by a fresh ``query_files``: a file
    the server already has must never be uploaded again (§10.1.7).
    """
    for attempt in range(3):
        missing = absent(rpc, list(files))
        if not missing:
            return
        try:
            for chunk in chunks([(n, files[n]) for n in missing]):
                rpc.upload_files(chunk)
            return
        except (RemotePhpError, RemoteUnavailableError) as exc:
            if attempt == 2:
                raise
            logger.info("an upload failed (%s); asking the server what it has", exc)


def chunks(files: list[tuple[str, bytes]]) -> Iterable[list[tuple[str, bytes]]]:
    """Uploads of at most 20 files and 8 MB (less the multipart overhead) each."""
    chunk: list[tuple[str, bytes]] = []
    size = 0
    budget = MAX_REQUEST_BYTES - _REQUEST_SLACK
    for name, data in files:
        if chunk and (len(chunk) == MAX_FILES_PER_UPLOAD or size + len(data) > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append((name, data))
        size += len(data)
    if chunk:
        yield chunk
