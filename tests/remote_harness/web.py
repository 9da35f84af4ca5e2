"""TEST STAND-IN for Apache + mod_php serving a BOINC project's remote-submission pages.

Not product code. ``WebServer(project_root).start()`` listens on 127.0.0.1 and serves
``<anything>/submit_rpc_handler.php``, ``<anything>/job_file.php`` (POST, field
``request``; multipart for uploads) and ``<anything>/get_output.php`` (GET). What PHP
itself does is modelled here (boinc-facts §10):

* every reply is HTTP 200 and starts ``<?xml version="1.0" encoding="ISO-8859-1" ?>``;
  ``display_errors`` is on, so warnings, deprecations and fatal errors are HTML in the body;
* php.ini limits: ``post_max_size`` 8M (a bigger body arrives with no fields at all),
  ``upload_max_filesize`` 2M, ``max_file_uploads`` 20 (later file parts are dropped);
* ``noisy=True`` adds a PHP warning between reply lines, like a project with
  sloppy local PHP code (a client must tolerate it, §10.2.9).

``stop()`` and ``start()`` again (same port) model a server that goes away mid-batch.
``calls`` records ``(command, error message or "")`` for every RPC, for assertions.
"""

from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.boinc_harness.common import Config, read_config

XML_HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
POST_MAX_SIZE = 8 * 1024 * 1024
UPLOAD_MAX_FILESIZE = 2 * 1024 * 1024
MAX_FILE_UPLOADS = 20
WARNING = (
    '<br />\n<b>Warning</b>:  Undefined array key "HTTP_X_FORWARDED_FOR" in '
    "<b>/var/www/boinctest/html/project/project.inc</b> on line <b>27</b><br />\n"
)


class Exit(Exception):
    """PHP's exit(): the reply so far is complete (``xml_error`` and fatal errors)."""


@dataclass
class Upload:
    """One file part of a multipart POST, as PHP's ``$_FILES`` entry sees it."""

    field: str
    data: bytes
    error: int = 0  # UPLOAD_ERR_INI_SIZE = 1


@dataclass
class Request:
    """One PHP request: its fields, files, and the reply being written."""

    config: Config
    fields: dict[str, str]
    files: list[Upload]
    noisy: bool
    out: list[str] = field(default_factory=list)
    conn: Any = None

    def echo(self, text: str) -> None:
        if self.noisy and self.out:
            self.out.append(WARNING)
        self.out.append(text)

    def warning(self, kind: str, message: str, where: str, line: int) -> None:
        self.out.append(
            f"<br />\n<b>{kind}</b>:  {message} in <b>{where}</b> on line <b>{line}</b><br />\n"
        )

    def fatal(self, message: str, where: str, line: int) -> None:
        self.out.append(
            f"<br />\n<b>Fatal error</b>:  {message} in <b>{where}</b> on line "
            f"<b>{line}</b><br />\n"
        )
        raise Exit

    def q(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        cur.execute(sql, args)
        return [
            {k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()}
            for row in cur.fetchall()
        ]

    def x(self, sql: str, *args: Any) -> int:
        cur = self.conn.cursor()
        cur.execute(sql, args)
        return int(cur.lastrowid or cur.rowcount)


def _parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], list[Upload]]:
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields: dict[str, str] = {}
    files: list[Upload] = []
    for part in body.split(b"--" + boundary):
        if not part.strip() or part.strip() == b"--":
            continue
        head, _, data = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        data = data[:-2] if data.endswith(b"\r\n") else data
        disposition = next(
            (h for h in head.decode().split("\r\n") if h.lower().startswith("content-disposition")),
            "",
        )
        params = dict(p.strip().split("=", 1) for p in disposition.split(";")[1:] if "=" in p)
        name = params.get("name", "").strip('"')
        if "filename" in params:
            if len(files) >= MAX_FILE_UPLOADS:
                continue  # PHP ignores file parts past max_file_uploads
            files.append(
                Upload(
                    name,
                    data if len(data) <= UPLOAD_MAX_FILESIZE else b"",
                    0 if len(data) <= UPLOAD_MAX_FILESIZE else 1,
                )
            )
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, files


class WebServer:
    """The project's web server with the three remote-submission pages."""

    def __init__(self, root: Path, *, noisy: bool = False) -> None:
        self.root = root
        self.noisy = noisy
        self.calls: list[tuple[str, str]] = []
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The master URL (``http://127.0.0.1:<port>/<project>/``)."""
        return f"http://127.0.0.1:{self.port}/{self.root.name}/"

    def start(self) -> WebServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                fields = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
                self._serve(path, fields, [])

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                ctype = self.headers.get("Content-Type") or ""
                fields: dict[str, str] = {}
                files: list[Upload] = []
                if length <= POST_MAX_SIZE:
                    if ctype.startswith("multipart/form-data"):
                        fields, files = _parse_multipart(body, ctype)
                    else:
                        fields = {
                            k: v[0]
                            for k, v in urllib.parse.parse_qs(
                                body.decode("utf-8", "replace")
                            ).items()
                        }
                self._serve(
                    self.path, fields, files, over_limit=length > POST_MAX_SIZE, length=length
                )

            def _serve(
                self,
                path: str,
                fields: dict[str, str],
                files: list[Upload],
                over_limit: bool = False,
                length: int = 0,
            ) -> None:
                status, headers, body = server.handle(
                    Path(path).name, fields, files, over_limit, length
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, daemon=True, name="remote-harness-web"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (the port stays reserved for ``start()``)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def record(self, command: str, error: str) -> None:
        with self._lock:
            self.calls.append((command, error))

    def handle(
        self,
        script: str,
        fields: dict[str, str],
        files: list[Upload],
        over_limit: bool,
        length: int,
    ) -> tuple[int, dict[str, str], bytes]:
        from . import rpc_files, rpc_submit

        config = read_config(self.root)
        req = Request(config=config, fields=fields, files=files, noisy=self.noisy)
        if over_limit:
            req.warning(
                "Warning",
                f"PHP Request Startup: POST Content-Length of {length} "
                f"bytes exceeds the limit of {POST_MAX_SIZE} bytes",
                "Unknown",
                0,
            )
        pages = {
            "submit_rpc_handler.php": rpc_submit.handle,
            "job_file.php": rpc_files.job_file,
            "get_output.php": rpc_files.get_output,
        }
        page = pages.get(script)
        if page is None:
            return 404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>"
        req.conn = config.connect()
        try:
            result = page(req, self)
        except Exit:
            result = None
        finally:
            req.conn.close()
        if result is not None:  # a download: (headers, bytes)
            headers, data = result
            return 200, headers, data
        ctype = "text/html; charset=UTF-8" if script == "get_output.php" else "text/xml"
        return 200, {"Content-Type": ctype}, "".join(req.out).encode("utf-8")
