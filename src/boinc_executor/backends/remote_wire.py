"""The wire side of BOINC's remote-submission RPCs: errors, reply types, encodings.

Split from :mod:`.remote_rpc` (the calls themselves): the exception family a caller
catches, the parsed shapes of ``query_batch`` / ``query_completed_job`` replies, the
master-URL check, the multipart encoder for ``upload_files`` and the small XML
helpers. Standard library only.
"""

from __future__ import annotations

import html
import re
import secrets
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import BoincExecutorError, ConfigError

__all__ = [
    "BatchStatus",
    "CompletedJob",
    "JobStatus",
    "RemoteAuthError",
    "RemotePhpError",
    "RemoteRpcError",
    "RemoteSubmitError",
    "RemoteUnavailableError",
    "get_int",
    "is_int",
    "multipart",
    "normalise_server",
    "unescape_stderr",
]


# --------------------------------------------------------------------------- errors


class RemoteSubmitError(BoincExecutorError):
    """Remote submission failed; the message says what to do."""


class RemoteUnavailableError(RemoteSubmitError):
    """The server could not be reached, timed out, or answered with an HTTP error.

    Attributes:
        maybe_applied: the request may have reached the server (a timeout or a
            dropped connection after sending), so it may have taken effect.
    """

    def __init__(self, message: str, *, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class RemoteRpcError(RemoteSubmitError):
    """The server refused the request with an ``<error>`` reply.

    Attributes:
        command: the RPC (``submit_batch`` ...).
        server_message: the server's ``error_msg``, scrubbed.
    """

    def __init__(self, message: str, *, command: str, server_message: str) -> None:
        super().__init__(message)
        self.command = command
        self.server_message = server_message


class RemoteAuthError(RemoteRpcError, ConfigError):
    """The authenticator is unknown, or its user may not do this (no submit rights)."""


class RemotePhpError(RemoteSubmitError):
    """The reply holds a PHP fatal error, or no parsable XML at all."""


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class JobStatus:
    """One job of a ``query_batch`` reply with job details (§10.3.1-2).

    Attributes:
        id: ``workunit.id``.
        name: the job (work unit) name.
        canonical_instance_id: the canonical result's ID (0 if none yet).
        status: ``queued``, ``in_progress``, ``done`` or ``error``.
        errors: the ``<error>`` words (``cancelled`` ...), in order.
        exit_status: the failed instance's exit status, when the server gives one.
    """

    id: int
    name: str
    canonical_instance_id: int
    status: str
    errors: tuple[str, ...] = ()
    exit_status: int | None = None


@dataclass(frozen=True)
class BatchStatus:
    """A ``query_batch`` reply: the batch's state and its jobs.

    Attributes:
        id: the batch ID.
        state: 0 init, 1 in progress, 2 complete, 3 aborted, 4 retired.
        njobs: jobs announced by submit_batch (set before create_work runs).
        name: the batch name.
        jobs: the jobs, with details.
    """

    id: int
    state: int
    name: str
    njobs: int = 0
    jobs: list[JobStatus] = field(default_factory=list)


@dataclass(frozen=True)
class CompletedJob:
    """A ``query_completed_job`` reply (only works for jobs with a canonical result).

    Attributes:
        error_mask: the work unit's ``error_mask``.
        canonical_resultid: the canonical result's ID.
        exit_status: that result's exit status.
        stderr_out: its ``stderr_out``, unescaped once (the server escapes it, §10.3.5).
    """

    error_mask: int
    canonical_resultid: int
    exit_status: int | None
    stderr_out: str


# --------------------------------------------------------------------------- helpers


def normalise_server(server: str) -> str:
    """The master URL with one trailing slash; refuses non-http(s) URLs and credentials in it.

    Raises:
        ConfigError: not an http(s) URL, or it carries a user name or password.
    """
    text = (server or "").strip()
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"server must be the project's master URL, like https://host/project/, got {text!r}"
        )
    if parsed.username or parsed.password:
        raise ConfigError(
            "the server URL must not carry credentials; pass the authenticator separately"
        )
    return (
        urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path, "", "")).rstrip("/")
        + "/"
    )


def unescape_stderr(text: str) -> str:
    """Undo the one ``htmlspecialchars`` the server applies to ``stderr_out`` (§10.3.5)."""
    return html.unescape(text).strip()


def multipart(request_xml: str, files: Sequence[tuple[str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data: part ``request``, then ``file_<i>`` in ``<phys_name>`` order."""
    boundary = "bx" + secrets.token_hex(16)
    out = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n'.encode(),
        request_xml.encode(),
        b"\r\n",
    ]
    for i, (name, data) in enumerate(files):
        out.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file_{i}"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
        )
        out += [data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def is_int(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", text))


def get_int(node: ET.Element, tag: str, command: str, default: int | None = None) -> int:
    text = (node.findtext(tag) or "").strip()
    if is_int(text):
        return int(text)
    if re.fullmatch(r"-?\d+\.0*", text):
        return int(float(text))
    if default is not None:
        return default
    raise RemotePhpError(f"the reply to {command} has no <{tag}>")
