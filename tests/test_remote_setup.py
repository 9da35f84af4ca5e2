"""``setup-project --remote``, ``grant-submit`` and the doctor checks, on the stand-in project.

The stand-in web server refuses uploads into download directories the web server's
group cannot write (boinc-facts §10.0/§10.1.2), so these tests show what the setup
step is for, not only that it ran.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor
from boinc_executor.cli import main
from boinc_executor.errors import SubmissionError
from boinc_executor.server.access import User
from boinc_executor.server.doctor import run_checks
from boinc_executor.server.remote import (
    remote_checks,
    remote_input_template,
    remote_output_template,
    setup_remote,
)
from tests import jobs
from tests.boinc_harness.project import Project
from tests.remote_harness.web import WebServer

pytestmark = pytest.mark.boinc


def _failed(root: Path) -> list[str]:
    return [c.name for c in remote_checks(root) if not c.ok]


def test_setup_remote_opens_the_download_hierarchy_once(pyboinc_project: Project) -> None:
    root = pyboinc_project.root
    assert "download dirs group-writable" in _failed(root)
    assert "templates/pyboinc_remote_out" in _failed(root)
    report = setup_remote(root)
    assert any("2775" in c for c in report.changes)
    assert any("grant-submit" in t for t in report.todo)
    download = pyboinc_project.download_dir
    fanouts = [d for d in download.iterdir() if d.is_dir()]
    assert len(fanouts) == 1024
    assert all(d.stat().st_mode & (stat.S_IWGRP | stat.S_ISGID) for d in [download, *fanouts])
    assert not [n for n in _failed(root) if not n.startswith("php")]
    assert setup_remote(root).changes == []  # idempotent
    out = (root / "templates" / "pyboinc_remote_out").read_text()
    assert out == remote_output_template() and "<no_delete/>" in out
    assert "<max_error_results>3</max_error_results>" in remote_input_template()


def test_without_setup_remote_uploads_fail_with_the_servers_message(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    web = WebServer(pyboinc_project.root).start()
    try:
        key = pyboinc_project.query("select authenticator from user where id=1")[0]["authenticator"]
        with BoincExecutor(server=web.url, authenticator=key, batch_dir=tmp_path / "b") as ex:
            with pytest.raises(SubmissionError, match=r"check permissions in download"):
                ex.submit(jobs.square, 3).result(timeout=60)
    finally:
        web.stop()


def test_cli_setup_remote_and_grant_submit(
    pyboinc_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(pyboinc_project.root)
    assert main(["setup-project", "--remote", root]) == 0
    assert "Remote submission:" in capsys.readouterr().out
    assert main(["grant-submit", root, "1"]) == 0  # user 1 already has a user_submit row
    assert "user_submit_app" in capsys.readouterr().out
    assert main(["grant-submit", root, "nobody@example.org"]) == 1
    assert "no user with email_addr" in capsys.readouterr().err
    assert main(["purge-remote-outputs", root]) == 0
    assert "deleted 0 outputs" in capsys.readouterr().out


def test_doctor_reports_remote_problems_until_setup_remote(pyboinc_project: Project) -> None:
    root = pyboinc_project.root
    me = User.current().name

    def remote_problems() -> set[str]:
        report = run_checks(root, web_user=me)
        return {f.check for f in report.findings if not f.ok and f.check.startswith("remote")}

    assert {"remote: download hierarchy", "remote: templates"} <= remote_problems()
    setup_remote(root)
    assert remote_problems() <= {"remote: PHP upload limits"}
    conn = pyboinc_project.connect()
    try:
        conn.cursor().execute("delete from user_submit")
    finally:
        conn.close()
    assert "remote: submit rights" in remote_problems()


PHP = """\
#!/bin/sh
# Stands in for the php CLI: answers setup's ini_get() probe as this php.ini would.
[ "$1" = "-r" ] || exit 2
case "$2" in *'ini_get("upload_max_filesize")'*) ;; *) exit 2 ;; esac
printf 'upload_max_filesize=1M\npost_max_size=16M\nmax_file_uploads=5\n'
"""


def test_php_limits_below_the_clients_are_reported(
    pyboinc_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "php").write_text(PHP)
    (bin_dir / "php").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = pyboinc_project.root
    report = setup_remote(root)
    low = [t for t in report.todo if t.startswith("PHP ")]
    assert len(low) == 2
    assert any("upload_max_filesize is 1M" in t and "at least 2097152" in t for t in low)
    assert any("max_file_uploads is 5" in t and "at least 20" in t for t in low)
    checks = {c.name: c for c in remote_checks(root)}
    assert not checks["php upload_max_filesize"].ok
    assert checks["php post_max_size"].ok and "16M" in checks["php post_max_size"].message
    assert not checks["php max_file_uploads"].ok
    findings = [
        f
        for f in run_checks(root, web_user=User.current().name).findings
        if f.check == "remote: PHP upload limits" and not f.ok
    ]
    assert len(findings) == 2 and all("php.ini" in f.fix for f in findings)
