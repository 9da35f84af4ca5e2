"""A client for BOINC's remote job submission and file management web RPCs.

Standard library only (``urllib`` and a small multipart encoder), so nothing but
the remote backend ever needs it and volunteers never load it. It speaks the
requests verified on a BOINC 1.6.2 server (boinc-facts §10) and copes with what
those replies really look like:

* every reply is HTTP 200, errors included: ``<CMD><error><error_num>…``
  (§10.2.1); PHP warnings, notices and "Deprecated" lines are HTML between the
  elements (§10.2.9) and are stripped before parsing; a PHP ``Fatal error``
  (e.g. re-uploading a known file, §10.1.7, or ``query_completed_job`` on a
  failed job, §10.3.5) becomes :class:`RemotePhpError`;
* ``abort_jobs`` answers XML that is not well-formed (§10.5.1), so its success
  is matched in the text;
* ``get_output.php`` answers ``ERROR: …`` as text/html with status 200 when
  the file is gone (§10.4.2).

Every call has a timeout; calls that are safe to repeat are retried with
exponential backoff on transport failures and 5xx answers; the others are
retried only when the connection was refused (the request never arrived), and
otherwise raise :class:`RemoteUnavailableError` with ``maybe_applied`` set so
the caller can find out what happened before it tries again.

The authenticator is a password: it is sent in the request body (and, for
``get_output.php``, only as ``md5(authenticator + result name)``), and every
message this module produces is scrubbed of it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from xml.sax.saxutils import escape

from ..errors import ConfigError
from .remote_wire import (
    BatchStatus,
    CompletedJob,
    JobStatus,
    RemoteAuthError,
    RemotePhpError,
    RemoteRpcError,
    RemoteSubmitError,
    RemoteUnavailableError,
    get_int,
    is_int,
    multipart,
    normalise_server,
    unescape_stderr,
)

__all__ = [
    "BatchStatus",
    "CompletedJob",
    "JobStatus",
    "RemoteAuthError",
    "RemotePhpError",
    "RemoteRpcError",
    "RemoteSubmitError",
    "RemoteUnavailableError",
    "RpcClient",
]

logger = logging.getLogger("boinc_executor")

ENV_CA_FILE = "BOINC_EXECUTOR_CA_FILE"
SUBMIT_RPC = "submit_rpc_handler.php"
JOB_FILE = "job_file.php"
GET_OUTPUT = "get_output.php"

_PHP_NOISE = re.compile(
    r"<br\s*/>\s*<b>(?:Warning|Notice|Deprecated|Strict Standards)</b>:.*?"
    r"(?:on line\s*<b>\d+</b>\s*<br\s*/>|(?=<br\s*/>)|$)",
    re.DOTALL,
)
_PHP_FATAL = re.compile(r"<b>(?:Fatal error|Parse error)</b>:\s*(.*?)(?:<br\s*/>|$)", re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_AUTH_ERRORS = ("bad authenticator", "no authenticator")
_ACCESS_ERRORS = ("no submit access", "no file access", "not owner")


# --------------------------------------------------------------------------- the client


class RpcClient:
    """Calls a BOINC project's remote-submission RPCs as one user.

    Args:
        server: the project's master URL (``https://host/project/``).
        authenticator: the user's account key.
        timeout: seconds each HTTP request may take.
        attempts: tries per call at most (transient failures only).
        backoff: seconds before the first retry; doubled each time.
        cafile: a CA bundle to verify the server's certificate with, default
            ``$BOINC_EXECUTOR_CA_FILE``, else the system's (TLS
            verification is always on for ``https``).

    Raises:
        ConfigError: the URL is not an http(s) URL, or the authenticator is empty.
    """

    def __init__(
        self,
        server: str,
        authenticator: str,
        *,
        timeout: float = 30.0,
        attempts: int = 4,
        backoff: float = 0.5,
        cafile: str | None = None,
    ) -> None:
        self.server = normalise_server(server)
        if not authenticator or not authenticator.strip():
            raise ConfigError("the authenticator is empty; give the account key of a BOINC user")
        self._auth = authenticator.strip()
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        # Verification is always on; a private CA is added, never a switch to turn it off.
        cafile = cafile or os.environ.get(ENV_CA_FILE) or None
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle {cafile}: {exc}") from None
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    # ------------------------------------------------------------------ plumbing

    def scrub(self, text: str) -> str:
        """``text`` with the authenticator (and anything derived from it) blanked out."""
        return text.replace(self._auth, "<authenticator>")

    def _auth_xml(self) -> str:
        return f"<authenticator>{escape(self._auth)}</authenticator>"

    def _send(
        self, script: str, body: bytes | None, headers: dict[str, str], query: str = ""
    ) -> tuple[http.client.HTTPMessage, bytes]:
        url = self.server + script + (f"?{query}" if query else "")
        request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
        with self._opener.open(request, timeout=self.timeout) as reply:
            return reply.headers, reply.read()

    def _call(
        self,
        what: str,
        script: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        idempotent: bool,
        query: str = "",
    ) -> tuple[http.client.HTTPMessage, bytes]:
        """One HTTP exchange with timeouts, bounded retries and backoff."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return self._send(script, body, headers, query)
            except urllib.error.HTTPError as exc:
                # A 5xx may come from a proxy while the PHP runs on: only a call that is
                # safe to repeat is repeated; the others report maybe_applied.
                retry = idempotent and (exc.code >= 500 or exc.code in (408, 429))
                reason = f"HTTP {exc.code} {exc.reason}"
                if exc.code in (401, 403):
                    raise RemoteAuthError(
                        f"{self.server}{script} refused {what} ({reason}); check the URL and "
                        "that the web server lets you reach the project's RPCs",
                        command=what,
                        server_message=reason,
                    ) from None
                if exc.code == 404:
                    raise ConfigError(
                        f"{self.server}{script} does not exist (HTTP 404): is {self.server} the "
                        "project's master URL (the page volunteers attach to)?"
                    ) from None
                maybe_applied = True
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if isinstance(inner, ssl.SSLCertVerificationError):
                    raise ConfigError(
                        f"the TLS certificate of {self.server} does not verify ({inner.reason}); "
                        f"give the server's CA bundle in {ENV_CA_FILE} rather "
                        "than turning verification off"
                    ) from None
                refused = isinstance(inner, (ConnectionRefusedError, socket.gaierror))
                retry = idempotent or refused
                maybe_applied = not refused
                reason = self.scrub(f"{type(inner).__name__}: {inner}")
            if not retry or attempt == self.attempts:
                raise RemoteUnavailableError(
                    f"{what} on {self.server} failed after {attempt} attempt(s): {reason}. "
                    "Check that the server is up and reachable from here",
                    maybe_applied=maybe_applied,
                )
            logger.debug("%s failed (%s); retrying in %.1f s", what, reason, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _rpc(
        self,
        command: str,
        inner: str,
        *,
        script: str = SUBMIT_RPC,
        files: Sequence[tuple[str, bytes]] = (),
        idempotent: bool = True,
    ) -> ET.Element:
        """POST ``<command><authenticator/>inner</command>`` as form field ``request``."""
        xml = f"<{command}>{self._auth_xml()}{inner}</{command}>"
        if files:
            body, content_type = multipart(xml, files)
        else:
            body = urllib.parse.urlencode({"request": xml}).encode()
            content_type = "application/x-www-form-urlencoded"
        _, raw = self._call(
            command, script, body, {"Content-Type": content_type}, idempotent=idempotent
        )
        return self._parse(command, raw.decode("utf-8", "replace"))

    def _parse(self, command: str, text: str) -> ET.Element:
        """The reply's XML, with PHP's HTML noise removed and errors raised."""
        fatal = _PHP_FATAL.search(text)
        if fatal:
            detail = self.scrub(_TAGS.sub("", fatal.group(1)).strip())[:500]
            raise RemotePhpError(
                f"the server's PHP crashed on {command}: {detail}. If it persists, show this "
                "to the project's operator (boinc-executor doctor on the server checks the setup)"
            )
        cleaned = _PHP_NOISE.sub("", text)
        if cleaned != text:
            logger.debug("%s: PHP warnings stripped from the reply", command)
        start = cleaned.find(
            "<", cleaned.find("?>") + 2 if cleaned.lstrip().startswith("<?xml") else 0
        )
        body = cleaned[start:] if start >= 0 else ""
        if "<!DOCTYPE" in body or "<!ENTITY" in body:
            raise RemotePhpError(f"the reply to {command} declares a DTD; refused")
        try:
            root = ET.fromstring(body)  # noqa: S314 - no DTD (checked above), size-bounded reply
        except ET.ParseError as exc:
            snippet = self.scrub(_TAGS.sub(" ", body)).strip()[:300]
            raise RemotePhpError(
                f"the reply to {command} is not XML ({exc}): {snippet!r}. Is the URL the "
                "project's master URL?"
            ) from None
        error = root if root.tag == "error" else root.find("error")
        if error is not None:
            message = self.scrub((error.findtext("error_msg") or "").strip())
            self._raise_error(command, message)
        return root

    def _raise_error(self, command: str, message: str) -> None:
        lowered = message.lower()
        if any(word in lowered for word in _AUTH_ERRORS):
            raise RemoteAuthError(
                f"{self.server} does not know this authenticator ({command}: {message}); use "
                "the account key of your BOINC account on this project (its web site shows it, "
                "or ask the project's operator)",
                command=command,
                server_message=message,
            )
        if any(word in lowered for word in _ACCESS_ERRORS):
            raise RemoteAuthError(
                f"{self.server} refused {command}: {message}. Your account needs submit rights "
                "for the pyboinc app: ask the project's operator to run "
                "'boinc-executor grant-submit PROJECT_DIR <your user ID or e-mail>'",
                command=command,
                server_message=message,
            )
        raise RemoteRpcError(
            f"{self.server} refused {command}: {message}",
            command=command,
            server_message=message,
        )

    # ------------------------------------------------------------------ submit_rpc_handler

    def ping(self) -> None:
        """Check that the RPC handler answers (needs no rights, §10.2.1)."""
        self._rpc("ping", "")

    def create_batch(self, app_name: str, batch_name: str) -> int:
        """A new, empty batch in state INIT; returns its ID (§10.2.2)."""
        root = self._rpc(
            "create_batch",
            f"<app_name>{escape(app_name)}</app_name><batch_name>{escape(batch_name)}</batch_name>"
            "<expire_time>0</expire_time>",
            idempotent=False,
        )
        return get_int(root, "batch_id", "create_batch")

    def submit_batch(
        self,
        batch_id: int,
        app_name: str,
        jobs: Sequence[tuple[str, Sequence[str]]],
        *,
        input_template: str,
        output_template: str,
        job_params: dict[str, float],
    ) -> None:
        """Fill an INIT batch with ``(job name, [staged physical names])`` jobs (§10.2.3-6).

        Not retried after the request may have arrived: one duplicate name
        fails the whole request (§10.2.5), so the caller checks what exists first.
        """
        params = "".join(f"<{k}>{v!r}</{k}>" for k, v in job_params.items())
        parts = [
            f"<batch><batch_id>{batch_id}</batch_id><app_name>{escape(app_name)}</app_name>",
            f"<input_template_filename>{escape(input_template)}</input_template_filename>",
            f"<output_template_filename>{escape(output_template)}</output_template_filename>",
            f"<job_params>{params}</job_params>",
        ]
        for name, sources in jobs:
            files = "".join(
                f"<input_file><mode>local_staged</mode><source>{escape(s)}</source></input_file>"
                for s in sources
            )
            parts.append(f"<job><name>{escape(name)}</name>{files}</job>")
        parts.append("</batch>")
        self._rpc("submit_batch", "".join(parts), idempotent=False)

    def query_batch(self, batch_id: int) -> BatchStatus:
        """The batch and its jobs with details (§10.3.1); also makes COMPLETE happen (§10.3.3)."""
        root = self._rpc(
            "query_batch",
            f"<batch_id>{batch_id}</batch_id><get_job_details>1</get_job_details>"
            "<get_cpu_time>1</get_cpu_time>",
        )
        batch = root if root.tag == "batch" else root.find("batch")
        if batch is None:
            batch = root
        jobs = []
        for job in batch.iter("job"):
            exit_text = (job.findtext("exit_status") or "").strip()
            jobs.append(
                JobStatus(
                    id=get_int(job, "id", "query_batch"),
                    name=(job.findtext("name") or "").strip(),
                    canonical_instance_id=get_int(job, "canonical_instance_id", "query_batch", 0),
                    status=(job.findtext("status") or "").strip(),
                    errors=tuple((e.text or "").strip() for e in job.findall("error")),
                    exit_status=int(exit_text) if is_int(exit_text) else None,
                )
            )
        return BatchStatus(
            id=get_int(batch, "id", "query_batch", batch_id),
            state=get_int(batch, "state", "query_batch", 0),
            name=(batch.findtext("name") or "").strip(),
            njobs=get_int(batch, "njobs", "query_batch", 0),
            jobs=jobs,
        )

    def query_batches(self) -> list[BatchStatus]:
        """The user's batches that are not retired (§10.3.4), without their jobs."""
        root = self._rpc("query_batches", "")
        return [
            BatchStatus(
                id=get_int(b, "id", "query_batches"),
                state=get_int(b, "state", "query_batches", 0),
                name=(b.findtext("name") or "").strip(),
            )
            for b in root.iter("batch")
        ]

    def query_job(self, job_id: int) -> list[tuple[str, int, str]]:
        """``(result name, result ID, state)`` of each instance of a job (§10.2.10).

        The state is html/inc/result.inc's ``state_string``: "Unsent", "In
        progress", "Completed and validated", ...
        """
        root = self._rpc("query_job", f"<job_id>{job_id}</job_id>")
        return [
            (
                (i.findtext("name") or "").strip(),
                get_int(i, "id", "query_job"),
                (i.findtext("state") or "").strip(),
            )
            for i in root.iter("instance")
        ]

    def query_completed_job(self, job_name: str) -> CompletedJob:
        """A finished job's canonical result (crashes on the server for failed jobs, §10.3.5)."""
        root = self._rpc("query_completed_job", f"<job_name>{escape(job_name)}</job_name>")
        node = root if root.tag == "completed_job" else root.find("completed_job")
        node = root if node is None else node
        exit_text = (node.findtext("exit_status") or "").strip()
        return CompletedJob(
            error_mask=get_int(node, "error_mask", "query_completed_job", 0),
            canonical_resultid=get_int(node, "canonical_resultid", "query_completed_job", 0),
            exit_status=int(exit_text) if is_int(exit_text) else None,
            stderr_out=unescape_stderr(node.findtext("stderr_out") or ""),
        )

    def abort_jobs(self, job_names: Sequence[str]) -> None:
        """Cancel jobs by name; the reply is not well-formed XML (§10.5.1)."""
        inner = "".join(f"<job_name>{escape(n)}</job_name>" for n in job_names)
        xml = f"<abort_jobs>{self._auth_xml()}{inner}</abort_jobs>"
        body = urllib.parse.urlencode({"request": xml}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        _, raw = self._call("abort_jobs", SUBMIT_RPC, body, headers, idempotent=True)
        text = raw.decode("utf-8", "replace")
        if re.search(r"<success>\s*1\s*</success>", text):
            return
        match = re.search(r"<error_msg>(.*?)</error_msg>", text, re.DOTALL)
        if match:
            self._raise_error("abort_jobs", self.scrub(match.group(1).strip()))
        self._parse("abort_jobs", text)  # raises on a PHP crash or unparsable text
        raise RemotePhpError("abort_jobs answered neither success nor an error")

    def abort_batch(self, batch_id: int) -> None:
        """Cancel every job of a batch (§10.5.3)."""
        self._rpc("abort_batch", f"<batch_id>{batch_id}</batch_id>")

    def retire_batch(self, batch_id: int) -> None:
        """Retire a batch: the server forgets it and may delete its outputs (§10.5.4)."""
        self._rpc("retire_batch", f"<batch_id>{batch_id}</batch_id>")

    # ------------------------------------------------------------------ job_file.php

    def query_files(self, names: Sequence[str]) -> list[str]:
        """The names the server does not have (§10.1.5); no ``<batch_id>`` (§10.1.8)."""
        inner = "".join(f"<phys_name>{escape(n)}</phys_name>" for n in names)
        root = self._rpc("query_files", inner, script=JOB_FILE)
        absent = [int((f.text or "").strip()) for f in root.iter("file")]
        return [names[i] for i in absent if 0 <= i < len(names)]

    def upload_files(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Upload files the server lacks, in ONE request (the caller keeps to the limits).

        Never retried once sent: a second upload of a file the first one stored
        crashes the PHP (§10.1.7); the caller asks ``query_files`` again instead.
        """
        inner = "".join(f"<phys_name>{escape(n)}</phys_name>" for n, _ in files)
        self._rpc("upload_files", inner, script=JOB_FILE, files=files, idempotent=False)

    # ------------------------------------------------------------------ get_output.php

    def get_output(self, result_name: str, file_num: int = 0, limit: int = 1 << 30) -> bytes | None:
        """An output file of a result through the authenticated ``result_file`` (§10.4.1-3).

        Returns None when the server no longer has the file (``ERROR: no such file``).

        Raises:
            RemoteAuthError: the server refused the credentials.
            RemoteSubmitError: the output is larger than ``limit`` or the reply is unexpected.
        """
        auth_str = hashlib.md5((self._auth + result_name).encode()).hexdigest()  # noqa: S324
        query = urllib.parse.urlencode(
            {
                "cmd": "result_file",
                "result_name": result_name,
                "file_num": file_num,
                "auth_str": auth_str,
            }
        )
        headers, body = self._call(
            f"get_output of {result_name}", GET_OUTPUT, None, {}, idempotent=True, query=query
        )
        if "octet-stream" in (headers.get("Content-Type") or "") or headers.get(
            "Content-Disposition"
        ):
            if len(body) > limit:
                raise RemoteSubmitError(
                    f"the output of {result_name} is over {limit} bytes; refused"
                )
            return body
        text = body.decode("utf-8", "replace").strip()
        if "no such file" in text.lower():
            return None
        message = self.scrub(_TAGS.sub("", text))[:300]
        if "auth" in text.lower():
            raise RemoteAuthError(
                f"{self.server} refused the output of {result_name}: {message}",
                command="get_output",
                server_message=message,
            )
        raise RemoteSubmitError(f"get_output of {result_name} answered {message!r}")
