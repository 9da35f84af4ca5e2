"""Delivery for the remote backend: outputs and failures become records in ``new/``.

The laptop plays the assimilator's part (docs/protocol.md): a done job's output is
downloaded through the authenticated ``get_output.php`` and written, unchanged and
atomically, as ``BATCH_DIR/new/<job>.<result name>.result``; a job BOINC gave up on
gets an error record carrying its error mask, exit status and (where the server can
say) its ``stderr_out``. Volunteer bytes are only checked for their frame header,
never decoded here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .. import protocol
from ..errors import describe_error_mask
from .remote_rpc import JobStatus, RemoteSubmitError, RemoteUnavailableError, RpcClient

__all__ = ["Delivery"]

_OUTPUT_MISSES = 3  # polls a done job's output may be missing before it fails
_ERROR_WORDS = {  # query_batch's <error> words (assumed from the bit names; docs/remote.md)
    "couldnt_send": 1,
    "too_many_errors": 2,
    "too_many_success": 4,
    "too_many_total": 8,
    "cancelled": 16,
    "no_canonical": 32,
}
_CANCELLED = 16


class Delivery:
    """Turns job outcomes seen by ``query_batch`` into records, once per job.

    Args:
        rpc: the client.
        batch_dir: the batch directory (its ``new/`` is read once).
        handled: the jobs whose records are in the handled-records pack.
    """

    def __init__(self, rpc: RpcClient, batch_dir: Path, handled: Iterable[str]) -> None:
        self.rpc = rpc
        self.batch_dir = batch_dir
        self.delivered: set[str] = set(handled)
        self.cancelled: set[str] = set()
        self._misses: dict[str, int] = {}
        for entry in (batch_dir / protocol.NEW).iterdir():
            parsed = protocol.parse_record_name(entry.name)
            if parsed is not None:
                self.delivered.add(parsed[0])

    def fetch(self, job: JobStatus) -> bool:
        """Download a done job's output into ``new/``; True when a record was written.

        The canonical instance's name comes from ``query_job`` (query_batch gives
        only its ID); ``get_output.php`` authenticates with md5(key + that name).
        """
        try:
            names = {i: n for n, i, _ in self.rpc.query_job(job.id)}
            result = names.get(job.canonical_instance_id, "")
            data = (
                self.rpc.get_output(result, limit=protocol.DEFAULT_MAX_RESULT_BYTES)
                if result
                else None
            )
        except RemoteUnavailableError:
            return False
        except RemoteSubmitError as exc:
            return self.error(job.name, "WorkunitError", f"fetching the output failed: {exc}")
        if data is None:
            self._misses[job.name] = self._misses.get(job.name, 0) + 1
            if self._misses[job.name] < _OUTPUT_MISSES:
                return False
            return self._output_gone(job, result)
        try:
            header, _ = protocol.decode_frame(data, "result")
            if header.get("job") != job.name:
                raise protocol.ProtocolError(f"the record names job {header.get('job')!r}")
        except Exception as exc:  # volunteer bytes: refuse, never crash on them
            return self.error(
                job.name, "WorkunitError", f"the output of job {job.name} was refused: {exc}"
            )
        tag = result if result and len(result) <= 100 else f"result{job.canonical_instance_id}"
        protocol.deliver_record(self.batch_dir, job.name, tag, data)
        self.delivered.add(job.name)
        return True

    def _output_gone(self, job: JobStatus, result: str) -> bool:
        stderr, status = "", None
        try:
            completed = self.rpc.query_completed_job(job.name)
            stderr, status = completed.stderr_out, completed.exit_status
        except RemoteSubmitError:
            pass
        return self.error(
            job.name,
            "WorkunitError",
            f"job {job.name} finished, but the server no longer has its output {result or '?'} "
            "where get_output.php reads it: the project must keep remote outputs until the "
            "batch is retired (its operator runs 'boinc-executor setup-project --remote')",
            exit_status=status,
            stderr_tail=protocol.tail(stderr),
        )

    def fail(self, job: JobStatus) -> bool:
        """An error record for a job BOINC gave up on (none for jobs we cancelled).

        The mask is rebuilt from query_batch's ``<error>`` words; ``stderr_out``
        comes from query_completed_job only when there is a canonical result,
        because the server's PHP crashes on it otherwise (§10.3.5).
        """
        if job.name in self.cancelled:
            self.delivered.add(job.name)
            return False
        mask = 0
        for word in job.errors:
            mask |= _ERROR_WORDS.get(word.lower().replace(" ", "_").replace("'", ""), 0)
        words = ", ".join(job.errors) or "no reason given"
        stderr = ""
        if job.canonical_instance_id:  # query_completed_job only works with a canonical result
            try:
                stderr = self.rpc.query_completed_job(job.name).stderr_out
            except RemoteSubmitError:
                stderr = ""
        hint = (
            "It was cancelled outside this executor"
            if mask & _CANCELLED
            else "The project's retry limits for remote jobs are in its templates/pyboinc_remote_in"
        )
        status = f"; exit status {job.exit_status}" if job.exit_status is not None else ""
        return self.error(
            job.name,
            "WorkunitError",
            f"BOINC gave up on job {job.name} (work unit {job.id}: {words}; error_mask {mask}: "
            f"{describe_error_mask(mask)}){status}. {hint}",
            error_mask=mask,
            exit_status=job.exit_status,
            stderr_tail=protocol.tail(stderr),
        )

    def error(self, job: str, kind: str, message: str, **extra: object) -> bool:
        """Deliver an error record (scrubbed of the key) for ``job``; always True."""
        info = protocol.failure_info(kind, self.rpc.scrub(message), **extra)
        info["host"] = protocol.host_name()
        record = protocol.encode_error_record(job, info, source="remote-backend")
        protocol.deliver_record(self.batch_dir, job, "error", record)
        self.delivered.add(job)
        return True
