"""TEST STAND-IN for html/user/job_file.php and get_output.php (BOINC 1.6.2). Not product code.

job_file.php (boinc-facts §10.1): ``query_files`` reports absent files by index, inserts
a job_file row for a file on disk without one and drops the row of a file that is gone;
``upload_files`` stores each part as download/<fanout>/<phys_name> plus ``.md5``
("<md5> <size>") and inserts its job_file row, and crashes with a fatal error when the
row exists (§10.1.7). No batch association (the table is missing, §10.1.8). The web
server's user is in the project group and can only create files in group-writable
download dirs (§10.0, §10.1.2): a dir it creates itself is 2755 (umask 022).

get_output.php ``cmd=result_file`` (§10.4): auth_str = md5(owner's authenticator +
result name); reads upload/<fanout>/<physical output name>, so it works only while the
upload is there; "ERROR: ..." as text/html otherwise.
"""

from __future__ import annotations

import hashlib
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.boinc_harness.backend import output_files
from tests.boinc_harness.common import fanout_dir

from .web import XML_HEAD, Exit, Request

if TYPE_CHECKING:
    from .web import WebServer

DIR_HIER = "/var/www/boinctest/html/inc/dir_hier.inc"
DB_CONN = "/var/www/boinctest/html/inc/db_conn.inc"


def xml_error(req: Request, server: WebServer, command: str, message: str) -> None:
    """xml.inc xml_error(): the error element, the closing tag, exit."""
    server.record(command, message)
    req.echo(
        f"<error>\n    <error_num>-1</error_num>\n    <error_msg>{message}</error_msg>\n</error>\n"
    )
    if command:
        req.echo(f"</{command}>\n")
    raise Exit


def parse_request(req: Request, server: WebServer) -> ET.Element:
    req.out.insert(0, XML_HEAD)
    text = req.fields.get("request", "")
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        xml_error(req, server, "", f"can't parse request message: {exc}")
        raise  # unreachable: xml_error exits


def authenticate(req: Request, server: WebServer, command: str, root: ET.Element) -> dict[str, Any]:
    auth = (root.findtext("authenticator") or "").strip()
    if not auth:
        xml_error(req, server, command, "no authenticator")
    users = req.q("select * from user where authenticator=%s", auth)
    if not users:
        xml_error(req, server, command, "bad authenticator")
    return users[0]


def user_submit(req: Request, user_id: int) -> dict[str, Any] | None:
    rows = req.q("select * from user_submit where user_id=%s", user_id)
    return rows[0] if rows else None


def _dir_for(req: Request, name: str, *, create: bool) -> tuple[Path, bool]:
    """dir_hier_path(): the fan-out dir, created as the web server would (2755)."""
    directory = req.config.download_dir / fanout_dir(name, req.config.fanout)
    if directory.is_dir():
        return directory, True
    if not create:
        return directory, False
    if not os.stat(req.config.download_dir).st_mode & 0o020:
        req.warning("Warning", "mkdir(): Permission denied", DIR_HIER, 32)
        req.echo(f"failed to mkdir: {directory}\n")
        return directory, False
    directory.mkdir()
    directory.chmod(0o2755)
    (directory / ".made_by_www_data").touch()  # www-data owns it: it may write here
    return directory, True


def _writable(directory: Path) -> bool:
    return bool(os.stat(directory).st_mode & 0o020) or (directory / ".made_by_www_data").exists()


def job_file(req: Request, server: WebServer) -> None:
    root = parse_request(req, server)
    command = root.tag
    req.echo(f"<{command}>\n")
    if command not in ("query_files", "upload_files"):
        xml_error(req, server, command, "bad command")
    user = authenticate(req, server, command, root)
    if user_submit(req, user["id"]) is None:
        xml_error(req, server, command, "no file access")
    names = [(p.text or "").strip() for p in root.findall("phys_name")]
    delete_time = float(root.findtext("delete_time") or 0)
    if root.findtext("batch_id") and int(root.findtext("batch_id") or 0):
        req.fatal(
            f"Uncaught mysqli_sql_exception: Table '{req.config.db_name}.batch_file_assoc' "
            "doesn't exist",
            DB_CONN,
            66,
        )
    if command == "query_files":
        absent = []
        for i, name in enumerate(names):
            directory, _ = _dir_for(req, name, create=True)
            path = directory / name
            row = req.q("select * from job_file where name=%s", name)
            if path.is_file():
                if not row:
                    req.x(
                        "insert into job_file (name, create_time, delete_time) values (%s, %s, %s)",
                        name,
                        time.time(),
                        delete_time,
                    )
                elif delete_time > row[0]["delete_time"]:
                    req.x("update job_file set delete_time=%s where name=%s", delete_time, name)
            else:
                if row:
                    req.x("delete from job_file where name=%s", name)
                absent.append(i)
        server.record(command, "")
        req.echo(
            "<absent_files>\n"
            + "".join(f"<file>{i}</file>\n" for i in absent)
            + "</absent_files>\n</query_files>\n"
        )
        return
    if len(req.files) != len(names):
        xml_error(
            req,
            server,
            command,
            f"# of uploaded files ({len(req.files)}) doesn't agree with request ({len(names)})",
        )
    for name, upload in zip(names, req.files, strict=True):
        if upload.error:
            xml_error(
                req,
                server,
                command,
                f"upload of {name} failed: file too large (upload_max_filesize)",
            )
        directory, ok = _dir_for(req, name, create=True)
        if not ok or not _writable(directory):
            if ok:
                req.warning(
                    "Warning",
                    f"file_put_contents({directory / name}.md5): Failed to "
                    "open stream: Permission denied",
                    "/var/www/boinctest/html/user/job_file.php",
                    140,
                )
            xml_error(
                req, server, command, "file operation failed; check permissions in download/*"
            )
        if req.q("select id from job_file where name=%s", name):
            server.record(command, "fatal: duplicate entry")
            req.fatal(
                f"Uncaught mysqli_sql_exception: Duplicate entry '{name}' for key 'jf_name'",
                DB_CONN,
                66,
            )
        path = directory / name
        path.write_bytes(upload.data)
        digest = hashlib.md5(upload.data).hexdigest()
        (directory / f"{name}.md5").write_text(f"{digest} {len(upload.data)}")
        req.x(
            "insert into job_file (name, create_time, delete_time) values (%s, %s, %s)",
            name,
            time.time(),
            delete_time,
        )
    server.record(command, "")
    req.echo("<success/>\n        </upload_files>\n")


def get_output(req: Request, server: WebServer) -> tuple[dict[str, str], bytes] | None:
    """get_output.php: only ``cmd=result_file`` is modelled (the one the client may use)."""
    fields = req.fields
    if fields.get("cmd") != "result_file":
        req.out.append("ERROR: unsupported command in this stand-in")
        return None
    name = fields.get("result_name", "")
    rows = req.q(
        "select r.*, b.user_id from result r join workunit w on w.id=r.workunitid "
        "join batch b on b.id=w.batch where r.name=%s",
        name,
    )
    if not rows:
        server.record("get_output", "no such result")
        req.out.append("ERROR: no such result")
        return None
    owner = req.q("select authenticator from user where id=%s", rows[0]["user_id"])
    expected = hashlib.md5(((owner[0]["authenticator"] if owner else "") + name).encode())
    if fields.get("auth_str", "") != expected.hexdigest():
        server.record("get_output", "bad authenticator")
        req.out.append("ERROR: bad authenticator")
        return None
    files = output_files(rows[0])
    index = int(fields.get("file_num", "0") or 0)
    if index >= len(files):
        req.out.append("ERROR: bad file_num")
        return None
    path = req.config.upload_dir / fanout_dir(files[index][0], req.config.fanout) / files[index][0]
    if not path.is_file():
        server.record("get_output", "no such file")
        req.out.append(f"ERROR: no such file {path}")
        return None
    server.record("get_output", "")
    return (
        {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename={path.name}",
        },
        path.read_bytes(),
    )
