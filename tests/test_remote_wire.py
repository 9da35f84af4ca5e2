"""The remote RPC client's parsing and encoding, without a server or a database.

What BOINC 1.6.2's PHP really sends back (boinc-facts §10): replies with PHP
warnings and "Deprecated" lines between the elements, fatal errors without a
closing tag, the malformed ``abort_jobs`` reply, ``stderr_out`` escaped inside a
CDATA section, and error replies that must become clear exceptions without the
authenticator in them.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from boinc_executor.backends.remote import RemoteBackend
from boinc_executor.backends.remote_rpc import (
    RemoteAuthError,
    RemotePhpError,
    RemoteRpcError,
    RemoteUnavailableError,
    RpcClient,
)
from boinc_executor.backends.remote_staging import chunks
from boinc_executor.backends.remote_state import resolve_authenticator
from boinc_executor.backends.remote_wire import multipart, normalise_server, unescape_stderr
from boinc_executor.errors import ConfigError

KEY = "0123456789abcdef0123456789abcdef"
HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
DEPRECATED = (
    "<br />\n<b>Deprecated</b>:  Creation of dynamic property BoincBatch::$njobs_success is "
    "deprecated in <b>/var/www/p/html/inc/submit_util.inc</b> on line <b>250</b><br />\n"
)


@pytest.fixture
def rpc() -> RpcClient:
    return RpcClient("http://127.0.0.1:1/p", KEY)


def test_deprecated_lines_between_elements_are_ignored(rpc: RpcClient) -> None:
    text = (
        f"{HEAD}<query_batch>\n{DEPRECATED}{DEPRECATED}<batch>\n<id>7</id>\n<state>1</state>\n"
        "<job><id>225</id><name>pyb_7_0</name><canonical_instance_id>0</canonical_instance_id>"
        "<status>queued</status></job></batch>\n</query_batch>\n"
    )
    root = rpc._parse("query_batch", text)
    assert root.find("batch/job/name").text == "pyb_7_0"  # type: ignore[union-attr]


def test_warning_before_the_root_element(rpc: RpcClient) -> None:
    warning = (
        '<br />\n<b>Warning</b>:  Undefined array key "x" in <b>/var/www/a.inc</b> on line '
        "<b>3</b><br />\n"
    )
    root = rpc._parse("ping", f"{HEAD}{warning}<ping>\n{warning}<success>1</success>\n</ping>")
    assert root.findtext("success") == "1"


def test_fatal_error_is_a_php_error_without_the_key(rpc: RpcClient) -> None:
    text = (
        f"{HEAD}<upload_files>\n<br />\n<b>Fatal error</b>:  Uncaught mysqli_sql_exception: "
        f"Duplicate entry 'jf_1' for key 'jf_name' ({KEY}) in <b>/x/db_conn.inc</b>:66<br />"
    )
    with pytest.raises(RemotePhpError, match="Duplicate entry") as info:
        rpc._parse("upload_files", text)
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("message", "kind", "hint"),
    [
        ("bad authenticator", RemoteAuthError, "does not know this authenticator"),
        ("no submit access", RemoteAuthError, "grant-submit"),
        ("no file access", RemoteAuthError, "grant-submit"),
        ("batch not in init state", RemoteRpcError, "batch not in init state"),
    ],
)
def test_error_replies(rpc: RpcClient, message: str, kind: type, hint: str) -> None:
    text = (
        f"{HEAD}<create_batch>\n<error>\n    <error_num>-1</error_num>\n    "
        f"<error_msg>{message}</error_msg>\n</error>\n</create_batch>\n"
    )
    with pytest.raises(kind, match=hint):
        rpc._parse("create_batch", text)


def test_not_xml_and_dtd_are_refused(rpc: RpcClient) -> None:
    with pytest.raises(RemotePhpError, match="not XML"):
        rpc._parse("ping", "<html><body>It works!")
    with pytest.raises(RemotePhpError, match="DTD"):
        rpc._parse("ping", '<!DOCTYPE x [<!ENTITY a "b">]><ping>&a;</ping>')


def test_stderr_is_unescaped_once() -> None:
    assert unescape_stderr(" &lt;stderr_txt&gt; a &amp;lt; b &lt;/stderr_txt&gt; ") == (
        "<stderr_txt> a &lt; b </stderr_txt>"
    )


def test_master_url_is_normalised_and_checked() -> None:
    assert normalise_server("https://h/p") == "https://h/p/"
    assert normalise_server(" http://h:8080/p/ ") == "http://h:8080/p/"
    for bad in ("h/p", "file:///etc", "https://user:pw@h/p/"):
        with pytest.raises(ConfigError):
            normalise_server(bad)
    with pytest.raises(ConfigError, match="empty"):
        RpcClient("https://h/p/", " ")


def test_multipart_keeps_the_file_order() -> None:
    body, ctype = multipart("<upload_files/>", [("jf_a", b"AAA"), ("jf_b", b"\r\nB")])
    assert ctype.startswith("multipart/form-data; boundary=")
    assert (
        body.index(b'name="request"') < body.index(b'name="file_0"') < body.index(b'name="file_1"')
    )
    assert b"\r\n\r\n\r\nB\r\n" in body


def test_upload_chunks_keep_to_phps_limits() -> None:
    files = [(f"jf_{i}", b"x" * 1_000_000) for i in range(17)] + [
        (f"jf_s{i}", b"y") for i in range(30)
    ]
    parts = list(chunks(files))
    assert [n for part in parts for n, _ in part] == [n for n, _ in files]
    assert all(len(p) <= 20 and sum(len(d) for _, d in p) <= 8 * 1024 * 1024 for p in parts)


def test_authenticator_sources(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="BOINC_EXECUTOR_AUTHENTICATOR_FILE"):
        resolve_authenticator(None)
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    monkeypatch.setenv("BOINC_EXECUTOR_AUTHENTICATOR_FILE", str(key_file))
    assert resolve_authenticator(None) == KEY
    monkeypatch.setenv("BOINC_EXECUTOR_AUTHENTICATOR", "from-env")
    assert resolve_authenticator(None) == "from-env"
    assert resolve_authenticator("explicit") == "explicit"
    assert RemoteBackend.kind == "remote"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An https server on loopback with a self-signed certificate; yields (URL, cert)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    class Ping(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = f"{HEAD}<ping>\n<success>1</success>\n</ping>\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Ping)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/p/", cert
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_tls_is_verified_and_a_private_ca_can_be_given(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = tls_server
    with pytest.raises(ConfigError, match="does not verify"):
        RpcClient(url, KEY, attempts=1).ping()
    RpcClient(url, KEY, cafile=str(cert)).ping()
    monkeypatch.setenv("BOINC_EXECUTOR_CA_FILE", str(cert))
    RpcClient(url, KEY).ping()


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[int], list[str]]]:
    """A loopback server answering each POST with the next status of a list (then 200).

    Yields (URL, statuses to answer, paths seen); the list is filled by the test.
    """
    statuses: list[int] = []
    seen: list[str] = []

    class Scripted(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.path)
            status = statuses.pop(0) if statuses else 200
            body = (
                f"{HEAD}<ping>\n<success>1</success>\n</ping>\n".encode()
                if status == 200
                else b"<h1>error</h1>"
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/p/", statuses, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_errors_are_retried_with_backoff_or_explained(
    scripted: tuple[str, list[int], list[str]],
) -> None:
    url, statuses, seen = scripted
    rpc = RpcClient(url, KEY, attempts=3, backoff=0.01)
    statuses[:] = [503, 502]
    rpc.ping()  # two 5xx answers, then success: retried
    assert len(seen) == 3
    seen.clear()
    statuses[:] = [500, 500, 500]
    with pytest.raises(RemoteUnavailableError, match=r"after 3 attempt\(s\): HTTP 500") as info:
        rpc.ping()
    assert len(seen) == 3 and KEY not in str(info.value)
    seen.clear()
    statuses[:] = [500]  # a request that creates something may have taken effect: no retry
    with pytest.raises(RemoteUnavailableError) as lost:
        rpc.create_batch("pyboinc", "b")
    assert len(seen) == 1 and lost.value.maybe_applied
    statuses[:] = [404]
    with pytest.raises(ConfigError, match="master URL"):
        rpc.ping()
    statuses[:] = [403]
    with pytest.raises(RemoteAuthError, match="HTTP 403"):
        rpc.ping()
    assert not statuses
