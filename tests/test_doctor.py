"""``boinc-executor doctor`` on a healthy stand-in project, and on one broken in each way.

Real MariaDB, the harness's bin/start with real daemon processes and lockf() locks, real
file modes checked for other users (``nobody``), a stand-in ``crontab``. Each broken
case must be reported with its fix, and the exit status must say so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boinc_executor.server.doctor import DoctorReport, Finding, run_checks
from boinc_executor.server.project import setup_project
from tests.boinc_harness import crontab
from tests.boinc_harness.project import Project
from tests.boinc_harness.start_stop import lock_held, lock_owner

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]
OTHER_VALIDATOR = "sample_bitwise_validator -d 3 --app labcheck --sleep_interval 1"


@pytest.fixture
def cron(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in crontab on PATH; returns the directory of per-user crontab files."""
    tabs = tmp_path / "crontabs"
    tabs.mkdir()
    crontab.install(tmp_path / "cron-bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'cron-bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("BOINC_HARNESS_CRONTABS", str(tabs))
    return tabs


def cron_line(project: Project) -> str:
    return f"0,5,10,15,20,25,30,35,40,45,50,55 * * * * cd {project.root} ; bin/start --cron\n"


@pytest.fixture
def healthy(pyboinc_project: Project, cron: Path) -> Project:
    """setup-project done, daemons started, a cron line for root (the owner here)."""
    (cron / "root").write_text(cron_line(pyboinc_project))
    assert pyboinc_project.run("start").returncode == 0
    return pyboinc_project


def failed(report: DoctorReport, check: str) -> list[Finding]:
    return [f for f in report.problems if f.check == check]


REMOTE_CHECKS = {
    "remote: download hierarchy",
    "remote: templates",
    "remote: PHP upload limits",
    "remote: submit rights",
}


def only_problem(report: DoctorReport, check: str, *words: str) -> Finding:
    """The single failed finding of ``check``, whose text holds ``words``; nothing else fails."""
    assert [f.check for f in report.problems] == [check], report.render()
    (finding,) = report.problems
    assert finding.fix, "every problem comes with its fix"
    for word in words:
        assert word in finding.problem + " " + finding.fix, report.render()
    return finding


def kill_daemon(project: Project, lock: str) -> None:
    owner = lock_owner(project.pid_dir / lock)
    assert owner is not None, lock
    os.kill(owner[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while lock_held(project.pid_dir / lock):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def doctor_cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "boinc_executor.cli", "doctor", str(project.root), *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
    )


def open_to_others(path: Path) -> None:
    """Let ``nobody`` traverse from / to ``path`` (pytest's temp dirs are 0700)."""
    for p in [path, *path.parents]:
        if str(p).startswith("/tmp/") and p.stat().st_uid == os.geteuid():
            p.chmod(p.stat().st_mode | 0o755)


def test_healthy_project_passes_every_check(healthy: Project) -> None:
    report = run_checks(healthy.root)
    assert report.ok, report.render()
    names = [f.check for f in report.findings]
    for name in ("daemon entries", "transitioner running", "feeder running",
                 "validator running", "assimilator running", "app versions", "host name",
                 "submitting user", "batch directories", "cron restarts daemons",
                 "daemon scripts"):
        assert name in names
    done = doctor_cli(healthy)
    assert done.returncode == 0 and "All checks passed." in done.stdout, done.stdout
    data = json.loads(doctor_cli(healthy, "--json").stdout)
    assert data["ok"] is True and {c["check"] for c in data["checks"]} >= set(names)


def test_setup_project_ends_with_the_doctor_summary(boinc_project: Project, cron: Path) -> None:
    report = setup_project(boinc_project.root)
    assert report.doctor is not None
    text = report.render()
    assert "boinc-executor doctor" in text
    # Nothing is started yet: the daemons are reported with bin/start as the fix.
    running = failed(report.doctor, "validator running")
    assert running and "bin/start" in running[0].fix
    assert "restart-daemons" in text and "boinccmd --project URL update" in text


def test_a_validator_that_lost_its_lock_and_dead_daemons(healthy: Project) -> None:
    project = healthy
    # An earlier release's entry (no <output>) behind another app's validator.
    text = project.config_path.read_text()
    text = text.replace("<output>pyboinc_validator.log</output>", "").replace(
        "<pid_file>pyboinc_validator.pid</pid_file>", "")
    project.config_path.write_text(text.replace("    <daemons>\n", (
        f"    <daemons>\n        <daemon><cmd>{OTHER_VALIDATOR}</cmd></daemon>\n"), 1))
    kill_daemon(project, "pyboinc_validator.log.lock")
    assert project.run("start").returncode == 0
    assert lock_held(project.pid_dir / "sample_bitwise_validator.lock")
    report = run_checks(project.root)
    problems = {f.check for f in report.problems}
    assert problems == {"daemon entries", "validator running"}, report.render()
    (running,) = failed(report, "validator running")
    assert "sample_bitwise_validator.lock" in running.problem
    assert "--app labcheck" in running.problem and "setup-project" in running.fix
    entries = failed(report, "daemon entries")
    assert any("earlier release" in f.problem for f in entries)
    assert any("shares the lock file sample_bitwise_validator.lock" in f.problem
               for f in entries)

    setup_project(project.root)  # upgrades the entry; a restart makes it run
    assert project.run("start").returncode == 0
    assert run_checks(project.root).ok

    kill_daemon(project, "pyboinc_assimilator.log.lock")
    only_problem(run_checks(project.root), "assimilator running", "is not running",
                 "pyboinc_assimilator.log.lock", "bin/start", "bin/status -v")
    assert project.run("start").returncode == 0
    kill_daemon(project, "transitioner.lock")
    only_problem(run_checks(project.root), "transitioner running", "transitioner.lock",
                 "is not running", "bin/start")
    assert project.run("start").returncode == 0
    kill_daemon(project, "feeder.lock")
    only_problem(run_checks(project.root), "feeder running", "feeder.lock", "bin/start")
    done = doctor_cli(project)
    assert done.returncode == 1 and "FAIL  feeder running" in done.stdout
    assert "1 problem found." in done.stdout


def test_app_versions_deprecated_or_missing_and_the_host(healthy: Project) -> None:
    project = healthy
    rows = project.query("select v.id from app_version v join platform p on p.id=v.platformid "
                         "where p.name='x86_64-pc-linux-gnu'")
    conn = project.connect()
    try:
        conn.cursor().execute("update app_version set deprecated=1 where id=%s", (rows[0]["id"],))
        only_problem(run_checks(project.root), "app versions", "x86_64-pc-linux-gnu",
                     "deprecated", "reread_db")
        conn.cursor().execute("delete from app_version where id=%s", (rows[0]["id"],))
        only_problem(run_checks(project.root), "app versions",
                     "no app version of pyboinc is registered for x86_64-pc-linux-gnu",
                     "setup-project")
    finally:
        conn.close()
    setup_project(project.root)
    assert run_checks(project.root).ok

    # An older release's version is live and this release's is deprecated: hosts get the
    # old runner, and the fix names the row to revive.
    (current,) = project.query(
        "select v.* from app_version v join platform p on p.id=v.platformid "
        "where p.name='x86_64-pc-linux-gnu'")
    conn = project.connect()
    try:
        cur = conn.cursor()
        cur.execute("insert into app_version (create_time, appid, version_num, platformid, "
                    "xml_doc) values (0, %s, %s, %s, %s)",
                    (current["appid"], current["version_num"] - 1, current["platformid"],
                     current["xml_doc"]))
        cur.execute("update app_version set deprecated=1 where id=%s", (current["id"],))
        finding = only_problem(run_checks(project.root), "app versions",
                               f"get app version {current['version_num'] - 1}",
                               f"version {current['version_num']} is deprecated",
                               f"SET deprecated=0 WHERE id={current['id']}", "reread_db")
        assert "older release" in finding.problem
        cur.execute("update app_version set deprecated=0 where id=%s", (current["id"],))
        assert run_checks(project.root).ok, "the newest live version is this release's"
        cur.execute("update app set deprecated=1 where id=%s", (current["appid"],))
        only_problem(run_checks(project.root), "app versions", "the app pyboinc is deprecated",
                     "UPDATE app SET deprecated=0", "reread_db")
        cur.execute("update app set deprecated=0 where id=%s", (current["appid"],))
    finally:
        conn.close()

    text = project.config_path.read_text()
    project.config_path.write_text(text.replace(f"<host>{project.host}</host>",
                                                "<host>localhost</host>", 1))
    report = run_checks(project.root)
    (host,) = failed(report, "host name")
    assert "'localhost'" in host.problem and f"<host>{project.host}</host>" in host.fix


def test_permissions_for_the_submitter_the_daemon_user_and_the_web_server(
    healthy: Project, tmp_path: Path, cron: Path
) -> None:
    project = healthy
    open_to_others(project.root)
    (cron / "nobody").write_text(cron_line(project))
    batch_dir = tmp_path / "batch"
    (batch_dir / "new").mkdir(parents=True)
    conn = project.connect()
    try:
        conn.cursor().execute(
            "insert into pyboinc_batch (batch_id, user_id, batch_dir, create_time) "
            "values (77, 1, %s, 0)", (str(batch_dir),))
    finally:
        conn.close()
    assert run_checks(project.root).ok, "root may do everything"

    report = run_checks(project.root, submit_user="nobody")
    only_problem(report, "submitting user", "nobody cannot create files in", "download",
                 "chmod -R g+rwX")
    # nobody may stage inputs but not run create_work: that alone is reported.
    download = project.root / "download"
    for d in [download, *(p for p in download.rglob("*") if p.is_dir())]:
        d.chmod(0o777)
    (project.bin_dir / "create_work").chmod(0o700)
    only_problem(run_checks(project.root, submit_user="nobody"), "submitting user",
                 "nobody cannot run create_work", "bin/create_work (rx)", "usermod -a -G")
    (project.bin_dir / "create_work").chmod(0o755)
    report = run_checks(project.root, daemon_user="nobody")
    (batch,) = failed(report, "batch directories")
    assert str(batch_dir / "new") in batch.problem and "assimilator" in batch.problem
    # Naming a web user says remote submission matters, so the remote preparation is
    # checked too (tests/test_remote_setup.py covers it); only the group is at stake here.
    report = run_checks(project.root, web_user="nobody")
    (group,) = failed(report, "web server group")
    assert "nobody is not in the project's group" in group.problem
    assert "usermod -a -G" in group.fix
    assert {f.check for f in report.problems} - {"web server group"} <= REMOTE_CHECKS
    (project.root / "html/user/submit_rpc_handler.php").write_text("<?php\n")
    problems = {f.check for f in run_checks(project.root).problems}
    assert problems - {"web server group"} <= REMOTE_CHECKS, "checked where remote matters"


def test_cron_line_and_daemon_scripts(healthy: Project, cron: Path, tmp_path: Path) -> None:
    project = healthy
    (cron / "root").write_text("# bin/start --cron, commented out\n")
    only_problem(run_checks(project.root), "cron restarts daemons", "no `bin/start --cron`",
                 "crontab -e", f"cd {project.root} && bin/start --cron")
    (cron / "root").write_text(cron_line(project))

    script = project.bin_dir / "pyboinc_assimilator"
    good = script.read_text()
    script.write_text(good.replace(f"exec {sys.executable}", "exec /nonexistent/venv/bin/python"))
    only_problem(run_checks(project.root), "daemon scripts", "/nonexistent/venv/bin/python",
                 "does not exist", "setup-project")

    private = tmp_path / "home" / "alice" / "venv" / "bin" / "python3"
    private.parent.mkdir(parents=True)
    private.write_text("#!/bin/sh\n")
    private.chmod(0o700)
    open_to_others(project.root)
    (tmp_path / "home" / "alice").chmod(0o700)
    script.write_text(good.replace(f"exec {sys.executable}", f"exec {private}"))
    (cron / "nobody").write_text(cron_line(project))
    report = run_checks(project.root, daemon_user="nobody")
    (unreadable,) = [f for f in failed(report, "daemon scripts") if str(private) in f.problem]
    assert "cannot run" in unreadable.problem and "nobody" in unreadable.fix

    # A launcher of the release before the layout change.
    script.write_text(good.replace("boinc_executor.server.daemonconf",
                                   "boinc_executor.daemonconf"))
    only_problem(run_checks(project.root), "daemon scripts", "earlier release",
                 "boinc_executor.daemonconf", "setup-project")
    report = setup_project(project.root)
    assert any("upgraded from an earlier release" in c for c in report.changes), report.changes
    assert report.doctor is not None and report.doctor.ok, report.render()
