"""The BOINC test harness's database and command-line tools follow boinc-facts.md.

These test the TEST STAND-IN itself (tests/boinc_harness), not the product: schema
strictness, create_work (single, --stdin, precedence, errors), dir_hier_path,
update_versions immutability, and the private MariaDB path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import MySQLdb
import pytest

from tests.boinc_harness.mariadb import (
    PRIVATE_ENV,
    DbServer,
    create_boinc_database,
    drop_database,
    ensure_server,
    stop_private_server,
)
from tests.boinc_harness.project import Project

pytestmark = pytest.mark.boinc

IN_TEMPLATE = """<input_template>
    <file_info>
        <number>0</number>
        <no_delete/>
    </file_info>
    <workunit>
        <file_ref>
            <file_number>0</file_number>
            <open_name>in.txt</open_name>
            <copy_file/>
        </file_ref>
{extra}    </workunit>
</input_template>
"""
OUT_TEMPLATE = """<output_template>
    <file_info>
        <name><OUTFILE_0/></name>
        <generated_locally/>
        <upload_when_present/>
        <max_nbytes>1000</max_nbytes>
        <url><UPLOAD_URL/></url>
    </file_info>
    <result>
        <file_ref>
            <file_name><OUTFILE_0/></file_name>
            <open_name>out.txt</open_name>
            <copy_file/>
        </file_ref>
    </result>
</output_template>
"""


def setup_app(project: Project, extra: str = "") -> None:
    """App "toy" in the DB (project.xml + xadd), its templates, and a staged input foo.txt."""
    project.add_app("toy")
    assert project.run("xadd").returncode == 0
    (project.root / "templates/toy_in").write_text(IN_TEMPLATE.format(extra=extra))
    (project.root / "templates/toy_out").write_text(OUT_TEMPLATE)
    staged = project.download_path("foo.txt")
    staged.parent.mkdir(exist_ok=True)
    staged.write_text("hello\n")


def names(project: Project) -> list[str]:
    return [row["name"] for row in project.query("select name from workunit order by id")]


def test_schema_is_strict_like_a_real_server(boinc_project: Project) -> None:
    conn = boinc_project.connect()
    try:
        with pytest.raises(MySQLdb.Error) as info:
            conn.cursor().execute("insert into batch (user_id, create_time) values (1, 0)")
        assert info.value.args[0] == 1364
        assert "doesn't have a default value" in info.value.args[1]
    finally:
        conn.close()
    (admin,) = boinc_project.query("select * from user where id=1")
    assert len(admin["authenticator"]) == 32
    (submit,) = boinc_project.query("select * from user_submit where user_id=1")
    assert submit["submit_all"] == 1
    tables = {next(iter(r.values())) for r in boinc_project.query("show tables")}
    assert tables == {"app", "app_version", "assignment", "batch", "job_file", "platform",
                      "result", "user", "user_submit", "user_submit_app", "workunit"}


def test_dir_hier_path_fanout(boinc_project: Project) -> None:
    done = boinc_project.run("dir_hier_path", "foo.txt")
    assert done.returncode == 0
    assert done.stdout.strip() == str(boinc_project.root / "download/85/foo.txt")
    assert (boinc_project.root / "download/85").is_dir()
    assert boinc_project.fanout_dir("foo.txt") == "85"


def test_create_work_single_job(boinc_project: Project) -> None:
    setup_app(boinc_project)
    before = int(time.time())
    done = boinc_project.run("create_work", "--appname", "toy", "--batch", "7",
                             "--priority", "3", "foo.txt")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("workunit name: toy_")
    wu = boinc_project.query("select * from workunit")[0]
    url = "http://127.0.0.1/boinctest/download/85/foo.txt"
    assert wu["xml_doc"] == (
        "<file_info>\n<no_delete/>\n    <name>foo.txt</name>\n"
        f"    <url>{url}</url>\n    <md5_cksum>b1946ac92492d2347c6235b4d2611184</md5_cksum>\n"
        "    <nbytes>6</nbytes>\n</file_info>\n<workunit>\n<command_line>\n\n</command_line>\n"
        "<file_ref>\n    <file_name>foo.txt</file_name>\n    <open_name>in.txt</open_name>\n"
        "    <copy_file/>\n</file_ref>\n</workunit>"
    )
    assert (wu["min_quorum"], wu["target_nresults"], wu["max_error_results"],
            wu["max_total_results"], wu["max_success_results"]) == (1, 1, 1, 1, 1)
    assert (wu["rsc_fpops_est"], wu["rsc_fpops_bound"], wu["rsc_memory_bound"],
            wu["rsc_disk_bound"], wu["delay_bound"]) == (3.6e12, 8.64e13, 5e8, 1e9, 604800)
    assert wu["result_template_file"] == "templates/toy_out"
    assert (wu["batch"], wu["priority"], wu["size_class"]) == (7, 3, -1)
    assert before <= wu["transition_time"] <= time.time() + 1
    assert (wu["canonical_resultid"], wu["error_mask"], wu["assimilate_state"],
            wu["file_delete_state"], wu["need_validate"]) == (0, 0, 0, 0, 0)
    assert boinc_project.query("select * from result") == []
    md5 = Path(f"{boinc_project.download_path('foo.txt')}.md5").read_text()
    assert md5 == "b1946ac92492d2347c6235b4d2611184 6.000000000000000e+00\n"


def test_create_work_help_and_usage_errors(boinc_project: Project, tmp_path: Path) -> None:
    done = boinc_project.run("create_work", "--help")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("usage: create_work [options] infile1 infile2 ...")
    elsewhere = subprocess.run([str(boinc_project.bin_dir / "create_work"), "--appname", "toy"],
                               cwd=tmp_path, capture_output=True, text=True, check=False)
    assert elsewhere.returncode == 1
    assert "Can't parse config file" in elsewhere.stderr


def test_duplicate_name_and_missing_file(boinc_project: Project) -> None:
    setup_app(boinc_project)
    args = ["--appname", "toy", "--wu_name", "j1", "foo.txt"]
    assert boinc_project.run("create_work", *args).returncode == 0
    dup = boinc_project.run("create_work", *args)
    assert dup.returncode == 1
    assert "create_work: workunit.insert() Error 1" in dup.stderr
    missing = boinc_project.run("create_work", "--appname", "toy", "--wu_name", "j2", "nope.txt")
    assert missing.returncode == 1
    path = boinc_project.download_path("nope.txt")
    assert f"md5_file: can't open {path}" in missing.stderr
    assert missing.stderr.rstrip().endswith("create_work: fopen() failed")
    assert names(boinc_project) == ["j1"]


def test_top_level_download_file_is_copied_into_the_hierarchy(boinc_project: Project) -> None:
    setup_app(boinc_project)
    (boinc_project.download_dir / "top.txt").write_text("top\n")
    done = boinc_project.run("create_work", "--appname", "toy", "--wu_name", "t", "top.txt")
    assert done.returncode == 0, done.stderr
    target = boinc_project.download_path("top.txt")
    assert f"copy {boinc_project.download_dir / 'top.txt'} to {target}" in done.stdout
    assert target.read_text() == "top\n"
    assert (boinc_project.download_dir / "top.txt").exists()


def test_input_template_overrides_command_line(boinc_project: Project) -> None:
    setup_app(boinc_project, extra="        <delay_bound>3600</delay_bound>\n"
                                   "        <target_nresults>3</target_nresults>\n"
                                   "        <rsc_fpops_est>1e9</rsc_fpops_est>\n"
                                   "        <command_line>-x</command_line>\n")
    done = boinc_project.run("create_work", "--appname", "toy", "--wu_name", "p",
                             "--delay_bound", "10", "--rsc_fpops_est", "5e9", "foo.txt")
    assert done.returncode == 0, done.stderr
    wu = boinc_project.workunit("p")
    assert wu is not None
    assert (wu["delay_bound"], wu["rsc_fpops_est"], wu["target_nresults"]) == (3600, 1e9, 3)
    assert (wu["max_success_results"], wu["max_total_results"]) == (3, 3)
    assert "<command_line>\n-x\n</command_line>" in wu["xml_doc"]
    twice = boinc_project.run("create_work", "--appname", "toy", "--wu_name", "q",
                              "--command_line", "-y", "foo.txt")
    assert twice.returncode == 1
    assert "Can't specify command line -x; already specified as -y" in twice.stderr


def test_limit_checks_and_file_ref_count(boinc_project: Project) -> None:
    setup_app(boinc_project)
    bad = boinc_project.run("create_work", "--appname", "toy", "--max_error_results", "2",
                            "foo.txt")
    assert bad.returncode == 1
    assert "max_error_results > max_total_results; can't create job" in bad.stderr
    (boinc_project.root / "templates/two_refs").write_text(
        IN_TEMPLATE.format(extra="        <file_ref><open_name>x</open_name></file_ref>\n"))
    refs = boinc_project.run("create_work", "--appname", "toy", "--wu_template",
                             "templates/two_refs", "foo.txt")
    assert refs.returncode == 1
    assert "too many <file_ref>s" in refs.stderr or "#file refs != #file infos" in refs.stderr
    assert names(boinc_project) == []


def test_stdin_bulk_mode(boinc_project: Project) -> None:
    setup_app(boinc_project)
    lines = ("--wu_name a --priority 5 foo.txt\n"
             "foo.txt --command_line 'one two'\n"
             "--wu_name c foo.txt\n")
    done = boinc_project.run("create_work", "--appname", "toy", "--wu_name", "g",
                             "--command_line", "base", "--batch", "9", "--stdin", input=lines)
    assert done.returncode == 0, done.stderr
    assert names(boinc_project) == ["a", "g_1", "c"]
    rows = {r["name"]: r for r in boinc_project.query("select * from workunit")}
    assert rows["a"]["priority"] == 5
    assert {r["batch"] for r in rows.values()} == {9}
    assert "<command_line>\nbase one two\n</command_line>" in rows["g_1"]["xml_doc"]
    bad = boinc_project.run("create_work", "--appname", "toy", "--stdin",
                            input="--wu_name d foo.txt\n--batch 3 foo.txt\n")
    assert bad.returncode == 1
    assert "create_work: bad stdin argument '--batch'" in bad.stderr
    assert names(boinc_project) == ["a", "g_1", "c"]


def test_stdin_duplicate_fails_the_whole_statement(boinc_project: Project) -> None:
    setup_app(boinc_project)
    assert boinc_project.run("create_work", "--appname", "toy", "--wu_name", "b1",
                             "foo.txt").returncode == 0
    lines = "".join(f"--wu_name b{i} foo.txt\n" for i in range(5))
    done = boinc_project.run("create_work", "--appname", "toy", "--stdin", input=lines)
    assert done.returncode == 1
    assert "wu.insert_batch() failed" in done.stderr
    assert "Duplicate entry 'b1'" in done.stderr
    assert names(boinc_project) == ["b1"]


def test_bulk_submit_can_be_killed_before_its_insert(boinc_project: Project) -> None:
    setup_app(boinc_project)
    proc = subprocess.Popen(
        [str(boinc_project.bin_dir / "create_work"), "--appname", "toy", "--stdin"],
        cwd=boinc_project.root, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "BOINC_HARNESS_CREATE_WORK_DELAY": "10"},
    )
    assert proc.stdin is not None
    proc.stdin.write(b"--wu_name k1 foo.txt\n--wu_name k2 foo.txt\n")
    proc.stdin.close()
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert names(boinc_project) == []


def register_version(
    project: Project, version: str, content: str
) -> subprocess.CompletedProcess[str]:
    directory = project.root / "apps/toy" / version / "x86_64-pc-linux-gnu"
    directory.mkdir(parents=True)
    (directory / "toy.sh").write_text(content)
    (directory / "toy.sh").chmod(0o755)
    return project.run("update_versions", "--noconfirm")


def test_update_versions_registers_and_keeps_files_immutable(boinc_project: Project) -> None:
    setup_app(boinc_project)
    first = register_version(boinc_project, "1.2", "#!/bin/sh\nexit 0\n")
    assert first.returncode == 0, first.stdout
    (av,) = boinc_project.query("select * from app_version")
    assert (av["version_num"], av["plan_class"]) == (102, "")
    assert "<url>http://127.0.0.1/boinctest/download/toy.sh</url>\n    <executable/>" \
        in av["xml_doc"]
    assert "<file_ref>\n    <file_name>toy.sh</file_name>\n    <main_program/>\n</file_ref>" \
        in av["xml_doc"]
    assert (boinc_project.download_dir / "toy.sh").read_text() == "#!/bin/sh\nexit 0\n"
    assert (boinc_project.root / "reread_db").exists()
    again = boinc_project.run("update_versions", "--noconfirm")
    assert "This app version already exists" in again.stdout
    changed = register_version(boinc_project, "3", "#!/bin/sh\nexit 1\n")
    assert changed.returncode != 0
    assert "BOINC files are immutable" in changed.stdout
    assert len(boinc_project.query("select * from app_version")) == 1
    assert boinc_project.run("xadd").returncode == 0
    assert len(boinc_project.query("select * from app")) == 1


def test_private_mariadb_server(monkeypatch: pytest.MonkeyPatch, db_server: DbServer) -> None:
    """BOINC_HARNESS_PRIVATE_MARIADB=1 starts a throw-away mariadbd on a free port."""
    monkeypatch.setenv(PRIVATE_ENV, "1")
    try:
        private = ensure_server()
        assert private.unix_socket is not None
        assert private.port != 3306
        create_boinc_database(private, "bh_private")
        conn = private.connect("bh_private")
        try:
            cur = conn.cursor()
            cur.execute("select @@sql_mode")
            assert "STRICT_TRANS_TABLES" in cur.fetchone()[0]
        finally:
            conn.close()
        drop_database(private, "bh_private")
    finally:
        if db_server.unix_socket is None:  # don't stop the session's own private server
            stop_private_server()
