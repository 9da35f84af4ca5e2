"""What each call printed: the bounds of capture and the record-header form.

The runner captures every call's standard output and error (passing them through to
the real streams) and writes them into the result record's header, one entry per
call, so the master can show a call's output without unpickling anything. Bounds:
each stream keeps its last :data:`OUTPUT_CHARS` characters per call, and a job
keeps at most :data:`JOB_OUTPUT_CHARS` per stream in all, so a chunk of chatty
calls never pushes its record past the result size cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["JOB_OUTPUT_CHARS", "OUTPUT_CHARS", "TaskOutput", "fit_outputs", "read_outputs"]

OUTPUT_CHARS = 65_536
JOB_OUTPUT_CHARS = 1_048_576


@dataclass(frozen=True)
class TaskOutput:
    """What one call printed, as its record captured it.

    Each stream keeps its last :data:`OUTPUT_CHARS` characters; a job of several
    calls keeps at most :data:`JOB_OUTPUT_CHARS` per stream, shared among them.

    Attributes:
        stdout: the captured standard output.
        stderr: the captured standard error.
        stdout_truncated: whether the start of ``stdout`` was cut off.
        stderr_truncated: whether the start of ``stderr`` was cut off.
    """

    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    def __bool__(self) -> bool:
        return bool(self.stdout or self.stderr or self.stdout_truncated or self.stderr_truncated)

    def to_header(self) -> dict[str, Any]:
        """The record-header form: only the fields that are set."""
        fields = {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        }
        return {k: v for k, v in fields.items() if v}

    @classmethod
    def from_header(cls, entry: Any) -> TaskOutput:
        """Read one header entry leniently: output is diagnostic, never a reason to fail."""
        if not isinstance(entry, dict):
            return cls()
        return cls(
            str(entry.get("stdout", "")),
            str(entry.get("stderr", "")),
            entry.get("stdout_truncated") is True,
            entry.get("stderr_truncated") is True,
        )


_SILENT = TaskOutput()  # what most jobs print: shared, it is immutable


def read_outputs(header: dict[str, Any], calls: int) -> list[TaskOutput]:
    """Per-call output from a result record's header (``calls`` entries).

    A record without per-call output (an error record, or a job that printed
    nothing) gives every call the job-level tails, which are all there is.
    """
    entries = header.get("output")
    if isinstance(entries, list) and len(entries) == calls:
        return [TaskOutput.from_header(e) for e in entries]
    stdout, stderr = str(header.get("stdout", "")), str(header.get("stderr", ""))
    whole = TaskOutput(stdout, stderr) if stdout or stderr else _SILENT
    return [whole] * calls


def fit_outputs(texts: Sequence[str], budget: int = JOB_OUTPUT_CHARS) -> list[str]:
    """Cut the calls' texts of one stream so that together they fit ``budget``.

    Calls that printed little keep everything; the rest share what is left
    equally, each keeping its last characters.
    """
    if sum(map(len, texts)) <= budget:
        return list(texts)
    lengths = sorted(len(t) for t in texts)
    left, limit = budget, 0
    for i, length in enumerate(lengths):
        share = left // (len(lengths) - i)
        if length > share:
            limit = share
            break
        left -= length
    return [t[len(t) - limit :] if len(t) > limit else t for t in texts]
