"""``boinc-executor setup-project`` on a stand-in project laid out by make_project.

Real MariaDB, the project's own (stand-in) tools bin/xadd and bin/update_versions, real
files. Checks the resulting files, rows and config.xml; that a second run changes
nothing and a newer release adds an app version; and the refusals.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("MySQLdb", reason="the BOINC harness needs mysqlclient")

import boinc_executor
from boinc_executor import ConfigError, DatabaseError, protocol
from boinc_executor.server import appversion
from boinc_executor.server.daemonconf import daemon_commands
from boinc_executor.server.project import setup_project
from boinc_executor.server.templates import input_template, output_template
from tests.boinc_harness.mariadb import DbServer, create_boinc_database, drop_database
from tests.boinc_harness.project import Project, make_project
from tests.boinc_harness.start_stop import running_daemons
from tests.boinc_harness.volunteer import VolunteerHost
from tests.test_appversion import LIVENESS, assimilated, delivered, submit

pytestmark = pytest.mark.boinc

SHORT_HOST = socket.gethostname().split(".")[0]
REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``root`` (except logs): content, mode and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.relative_to(root).parts[0].startswith("log_"):
            st = path.stat()
            out[str(path.relative_to(root))] = (path.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


def db_rows(project: Project) -> dict[str, list[dict]]:
    return {t: project.query(f"select * from {t} order by id")
            for t in ("app", "app_version", "platform")}


def daemons(project: Project) -> list[tuple[str, str]]:
    doc = ET.parse(project.config_path).getroot()
    return [((d.findtext("cmd") or "").strip(), (d.findtext("host") or "").strip())
            for d in doc.iterfind("daemons/daemon")]


def versions(project: Project) -> dict[str, list[int]]:
    rows = project.query("select p.name, v.version_num from app_version v join platform p on "
                         "p.id=v.platformid join app a on a.id=v.appid where a.name='pyboinc' "
                         "order by v.version_num")
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row["name"], []).append(row["version_num"])
    return out


def test_setup_configures_the_project_and_a_second_run_changes_nothing(
    boinc_project: Project,
) -> None:
    project = boinc_project
    config_before = project.config_path.read_text()
    report = setup_project(project.root)
    assert any("bin/stop && bin/start" in t for t in report.todo)
    assert report.version_num == appversion.version_num(boinc_executor.__version__) == 100

    # The app, one app version per platform, our batch table.
    assert [a["name"] for a in project.query("select name from app")] == ["pyboinc"]
    assert versions(project) == {p: [100] for p in appversion.ALL_PLATFORMS}
    assert project.query("show tables like 'pyboinc_batch'")
    assert "<app>" in (project.root / "project.xml").read_text()

    # Templates: exactly the contract's.
    assert (project.root / "templates/pyboinc_in").read_text() == input_template()
    assert (project.root / "templates/pyboinc_out").read_text() == output_template()
    tin = ET.fromstring(input_template())
    (prog, data) = tin.iterfind("file_info")
    assert prog.find("no_delete") is not None and data.find("no_delete") is None
    refs = tin.findall("workunit/file_ref")
    assert [r.findtext("open_name") for r in refs] == ["program.pkl", "data.pkl"]
    assert all(r.find("copy_file") is not None for r in refs)
    assert tin.find("workunit/rsc_fpops_est") is None, "JobParams must win (facts §3)"
    tout = ET.fromstring(output_template())
    assert tout.findtext("file_info/max_nbytes") == str(protocol.DEFAULT_MAX_RESULT_BYTES)
    assert tout.findtext("result/file_ref/open_name") == "result.pkl"
    assert tout.find("result/file_ref/copy_file") is not None

    # App-version directories: launcher main program + pyboinc.zip (copy_file), flat in download/.
    for platform in appversion.ALL_PLATFORMS:
        pdir = project.root / "apps/pyboinc/1.00" / platform
        vxml = ET.parse(pdir / "version.xml").getroot()
        main, runner = vxml.findall("file")
        assert main.find("main_program") is not None
        assert runner.findtext("logical_name") == "pyboinc.zip"
        assert runner.find("copy_file") is not None
        for f in (main, runner):
            name = f.findtext("physical_name")
            assert re.fullmatch(r"pyboinc_(launcher|runner)_0\.1\.0_[0-9a-f]{10}\.(sh|bat|zip)",
                                name)
            assert (project.download_dir / name).read_bytes() == (pdir / name).read_bytes()
        launcher = (pdir / main.findtext("physical_name")).read_bytes()
        if platform == appversion.WINDOWS_PLATFORM:
            assert launcher.startswith(b"@echo off\r\n") and b"\n" not in launcher.replace(
                b"\r\n", b"")
        else:
            assert launcher.startswith(b"#!/bin/sh\n")
            assert os.access(pdir / main.findtext("physical_name"), os.X_OK)
    linux_doc = project.query("select v.xml_doc from app_version v join platform p on "
                              "p.id=v.platformid where p.name='x86_64-pc-linux-gnu'")[0]["xml_doc"]
    assert "<open_name>pyboinc.zip</open_name>" in linux_doc and "<executable/>" in linux_doc

    # Daemon scripts and config.xml daemons.
    for script in ("pyboinc_assimilator", "pyboinc_compare"):
        assert os.access(project.bin_dir / script, os.X_OK)
    cmds = daemon_commands()
    assert daemons(project)[-2:] == [(cmds["assimilator"], SHORT_HOST),
                                     (cmds["validator"], SHORT_HOST)]
    assert cmds["assimilator"] == ("script_assimilator -d 3 --app pyboinc --sleep_interval 1 "
                                   "--script pyboinc_assimilator")
    config_after = project.config_path.read_text()
    ours = re.findall(r"        <daemon>\n            <cmd>[^<]*pyboinc[^<]*</cmd>\n"
                      r"            <host>[^<]*</host>\n"
                      r"            <output>pyboinc_(?:assimilator|validator)\.log</output>\n"
                      r"            <pid_file>pyboinc_\w+\.pid</pid_file>\n"
                      r"        </daemon>\n", config_after)
    assert len(ours) == 2
    assert config_after.replace(ours[0], "").replace(ours[1], "") == config_before, \
        "the rest of config.xml is kept byte for byte"

    # Second run: no change at all, not even a touched file.
    files, rows = snapshot(project.root), db_rows(project)
    again = setup_project(project.root)
    assert again.changes == [] and again.todo == []
    assert "Nothing to change" in again.render()
    assert snapshot(project.root) == files
    assert db_rows(project) == rows


def test_newer_release_adds_an_app_version_and_hosts_get_it(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    project = pyboinc_project
    old_files = snapshot(project.root / "apps/pyboinc/1.00")
    config = project.config_path.read_bytes()
    report = setup_project(project.root, release="0.2.0")
    assert report.version_num == 200
    assert versions(project) == {p: [100, 200] for p in appversion.ALL_PLATFORMS}
    assert snapshot(project.root / "apps/pyboinc/1.00") == old_files, "immutable"
    assert project.config_path.read_bytes() == config, "daemons unchanged"
    assert any("reread_db" in t for t in report.todo)
    assert len(list(project.download_dir.glob("pyboinc_launcher_0.2.0_*.sh"))) == 4
    # The scheduler sends only the newest version (facts §6).
    host = VolunteerHost(project, client_dir=tmp_path / "client")
    job = submit(project, tmp_path / "batch", abs, [((-1,), {})])
    host.run_until(lambda: assimilated(project, job), timeout=LIVENESS)
    (result,) = project.results(job)
    assert result["app_version_num"] == 200 and result["outcome"] == 1
    assert setup_project(project.root, release="0.2.0").changes == []


def test_changed_files_under_a_registered_release_are_not_rewritten(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    stage = tmp_path / "py" / "python" / "bin"
    stage.mkdir(parents=True)
    (stage / "python3").write_text("#!/bin/sh\nexec python3 \"$@\"\n")
    (stage / "python3").chmod(0o755)
    archive = tmp_path / "py.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "py" / "python", arcname="python")
    before = snapshot(pyboinc_project.root / "apps")
    report = setup_project(pyboinc_project.root, interpreters={"aarch64-unknown-linux-gnu":
                                                                archive})
    assert report.changes == []
    (warning,) = report.todo
    assert "aarch64-unknown-linux-gnu is already registered with other files" in warning
    assert snapshot(pyboinc_project.root / "apps") == before


def test_float_validator_replaces_the_validator_and_validates(
    pyboinc_project: Project, tmp_path: Path
) -> None:
    project = pyboinc_project
    report = setup_project(project.root, float_validator=True)
    cmd = daemon_commands(float_validator=True)["validator"]
    assert report.changes == [
        f"replaced the validator daemon in config.xml: {cmd} (host {SHORT_HOST}, "
        "output pyboinc_validator.log, pid_file pyboinc_validator.pid)"]
    validators = [c for c, _ in daemons(project) if "validator" in c]
    assert validators == ["script_validator -d 3 --app pyboinc --sleep_interval 1 "
                          "--init_script pyboinc_compare --compare_script pyboinc_compare"]
    # A job validated by bin/pyboinc_compare (the daemons/ module run by our launcher script).
    host = VolunteerHost(project, client_dir=tmp_path / "client")
    job = submit(project, tmp_path / "batch", float, [(("0.5",), {})])
    host.run_until(lambda: assimilated(project, job), timeout=LIVENESS)
    (result,) = project.results(job)
    assert (result["outcome"], result["validate_state"]) == (1, 1)
    assert delivered(tmp_path / "batch", job, 1).outcomes == [(True, 0.5)]
    assert "pyboinc_compare" in (project.log_dir / "script_validator.log").read_text()
    # And back.
    setup_project(project.root)
    assert [c for c, _ in daemons(project) if "validator" in c] == [
        daemon_commands()["validator"]]


def test_daemon_scripts_run_the_daemon_modules(pyboinc_project: Project) -> None:
    # No arguments is a usage error for pyboinc_compare (exit 3 = "transient" for BOINC).
    done = subprocess.run([str(pyboinc_project.bin_dir / "pyboinc_compare")],
                          cwd=pyboinc_project.tmp_dir, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3, done.stderr
    assert "pyboinc_compare" in done.stderr


def test_daemon_sources_are_found_in_a_wheel_layout(tmp_path: Path) -> None:
    """pyproject force-includes daemons/ as boinc_executor/_daemons in the wheel."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "src/boinc_executor", site / "boinc_executor")
    shutil.copytree(REPO / "daemons", site / "boinc_executor/_daemons")
    code = ("from boinc_executor.server.daemonconf import daemon_source; "
            "print(daemon_source('pyboinc_assimilator'))")
    # -I: no PYTHONPATH and no current directory; the copy goes first on sys.path.
    code = f"import sys; sys.path.insert(0, {str(site)!r}); " + code
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == str(site / "boinc_executor/_daemons/pyboinc_assimilator.py")


# --------------------------------------------------------------------------- refusals


def test_refuses_a_directory_that_is_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a BOINC project"):
        setup_project(tmp_path)
    (tmp_path / "config.xml").write_text("<boinc><config/></boinc>\n")
    with pytest.raises(ConfigError, match=r"is not a BOINC project \(it lacks project.xml"):
        setup_project(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.xml"]
    with pytest.raises(ConfigError, match="is not a directory"):
        setup_project(tmp_path / "nope")


def test_refuses_an_unreachable_database_before_changing_anything(
    boinc_project: Project,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = boinc_project.config_path.read_text()
    text = re.sub(r"<db_host>[^<]*</db_host>", f"<db_host>127.0.0.1:{port}</db_host>", text)
    text = re.sub(r"\s*<db_port>[^<]*</db_port>", "", text)
    boinc_project.config_path.write_text(text)
    before = snapshot(boinc_project.root)
    with pytest.raises(DatabaseError, match=f"cannot reach the BOINC database at 127.0.0.1:{port}"):
        setup_project(boinc_project.root)
    assert snapshot(boinc_project.root) == before


def test_refuses_an_entry_that_takes_our_lock_before_changing_anything(
    boinc_project: Project,
) -> None:
    """An operator's daemon logging to pyboinc_validator.log would hold our validator's
    lock: refused up front, naming that entry, with the project left as it was."""
    project = boinc_project
    project.add_daemon("sample_bitwise_validator -d 3 --app labcheck",
                       output="pyboinc_validator.log")
    before, rows = snapshot(project.root), db_rows(project)
    done = subprocess.run([sys.executable, "-m", "boinc_executor.cli", "setup-project",
                           str(project.root)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("`sample_bitwise_validator -d 3 --app labcheck` uses the lock file "
            "pyboinc_validator.log.lock, which the pyboinc validator needs") in done.stderr
    assert "own <output>, <pid_file> and <lock_file>" in done.stderr
    assert snapshot(project.root) == before and db_rows(project) == rows
    assert not project.query("select * from app where name='pyboinc'")

    text = project.config_path.read_text()  # the operator renames their log: accepted
    project.config_path.write_text(text.replace("pyboinc_validator.log", "labcheck_validator.log"))
    setup_project(project.root)
    assert project.query("select * from app where name='pyboinc'")


@pytest.fixture
def readable_project(db_server: DbServer) -> Iterator[Project]:
    """A project outside pytest's private tmp dirs, so another user can read it."""
    db_name = f"bh_{uuid.uuid4().hex[:16]}"
    create_boinc_database(db_server, db_name)
    base = Path(tempfile.mkdtemp(prefix="bx-perm-"))
    base.chmod(0o755)
    try:
        yield make_project(base / "boinctest", db_server, db_name)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        drop_database(db_server, db_name)


def test_refuses_without_write_permission(readable_project: Project) -> None:
    root = readable_project.root
    before = snapshot(root)
    if os.geteuid() == 0:
        # root may write anywhere: run the command as an unprivileged user instead.
        cmd = ["/usr/bin/env", f"PYTHONPATH={REPO / 'src'}", "python3", "-m",
               "boinc_executor.cli", "setup-project", str(root)]
        done = subprocess.run(cmd, user="nobody", cwd="/", capture_output=True, text=True,
                              timeout=60)
    else:
        root.chmod(0o555)
        try:
            done = subprocess.run([sys.executable, "-m", "boinc_executor.cli", "setup-project",
                                   str(root)], capture_output=True, text=True, timeout=60)
        finally:
            root.chmod(0o755)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"no permission to write {root}" in done.stderr
    assert "run setup-project as the user that owns the project" in done.stderr
    assert snapshot(root) == before
    assert not readable_project.query("select * from app")


# --------------------------------------------------------------------------- CLI


def test_cli_sets_up_and_reports(boinc_project: Project) -> None:
    script = Path(sys.executable).parent / "boinc-executor"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "boinc_executor.cli"]
    first = subprocess.run([*cmd, "-v", "setup-project", str(boinc_project.root)],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "Changed:" in first.stdout and "registered app version 100" in first.stdout
    assert "bin/stop && bin/start" in first.stdout
    assert "setting up: app versions" in first.stderr
    second = subprocess.run([*cmd, "setup-project", str(boinc_project.root)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "Nothing to change" in second.stdout
    bad = subprocess.run([*cmd, "setup-project", str(boinc_project.root / "templates")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "is not a BOINC project" in bad.stderr
    usage = subprocess.run([*cmd, "setup-project", "x", "--python", "beos=py.tgz"],
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "unknown platform 'beos'" in usage.stderr


def test_offline_code_signing(boinc_project: Project) -> None:
    """Without the private key on the server, sign offline, add the .sig files, run again."""
    (boinc_project.root / "keys/code_sign_private").unlink()
    with pytest.raises(ConfigError, match=r"no \.sig file for pyboinc_"):
        setup_project(boinc_project.root)
    assert not versions(boinc_project)
    files = list((boinc_project.root / "apps/pyboinc/1.00").rglob("pyboinc_*"))
    assert len(files) == 2 * len(appversion.ALL_PLATFORMS)
    for path in files:  # what sign_executable would print, made on the offline machine
        Path(f"{path}.sig").write_text(f"offline-signature-of-{path.name}\n.\n")
    setup_project(boinc_project.root)
    assert versions(boinc_project) == {p: [100] for p in appversion.ALL_PLATFORMS}
    doc = boinc_project.query("select xml_doc from app_version limit 1")[0]["xml_doc"]
    assert "offline-signature-of-pyboinc_launcher_" in doc


def test_cli_status(pyboinc_project: Project, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "boinc-executor"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "boinc_executor.cli"]
    batch_dir = tmp_path / "batch"
    job = submit(pyboinc_project, batch_dir, abs, [((-4,), {})])
    batch_id = protocol.parse_job_name(job)[1]
    # What an executor writes first: the checkpoint, and the job's journal line.
    from boinc_executor.batch import BatchDir, Checkpoint, JournalEntry

    batch = BatchDir(batch_dir)
    batch.write_checkpoint(Checkpoint(batch_id, "boinc", "pyb", str(pyboinc_project.root), 1.0))
    batch.append_journal([JournalEntry(job, 0, 0, 1, "-", "-", protocol.data_file_name(job))])
    batch.close()
    done = subprocess.run([*cmd, "status", str(batch_id), "--project", str(pyboinc_project.root)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"batch {batch_id} (boinc) in {batch_dir}" in done.stdout
    assert "calls: 1 total, 1 queued, 0 running, 0 done, 0 failed, 0 cancelled" in done.stdout
    missing = subprocess.run([*cmd, "status", "999", "--project", str(pyboinc_project.root)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 3 and "batch 999 is not a boinc-executor batch" in missing.stderr
    nowhere = subprocess.run([*cmd, "status", "1"], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "PYBOINC_DIR"})
    assert nowhere.returncode == 3 and "no local batch 1" in nowhere.stderr  # the local registry


def test_rerun_keeps_the_operators_modes_and_repairs_our_files(pyboinc_project: Project) -> None:
    root = pyboinc_project.root
    (root / "templates/pyboinc_in").chmod(0o640)  # the operator's choice: kept
    (root / "bin/pyboinc_assimilator").chmod(0o644)  # broken: must be executable again
    (root / "templates/pyboinc_out").write_text("<output_template/>\n")  # edited: restored
    report = setup_project(root)
    assert report.changes == ["updated templates/pyboinc_out (template)",
                              "made executable bin/pyboinc_assimilator (daemon script)"]
    assert (root / "templates/pyboinc_in").stat().st_mode & 0o777 == 0o640
    assert (root / "templates/pyboinc_out").read_text() == output_template()
    assert os.access(root / "bin/pyboinc_assimilator", os.X_OK)


def test_warns_when_the_projects_host_is_not_this_host(boinc_project: Project) -> None:
    """make_project writes getfqdn() (often "localhost"): reported, not fixed."""
    text = boinc_project.config_path.read_text()
    boinc_project.config_path.write_text(
        text.replace(f"<host>{boinc_project.host}</host>", "<host>localhost</host>", 1))
    report = setup_project(boinc_project.root)
    assert any(f"<host> is 'localhost' but this host is {SHORT_HOST!r}" in t for t in report.todo)
    assert "<host>localhost</host>" in boinc_project.config_path.read_text()
    assert daemons(boinc_project)[-1][1] == SHORT_HOST


def test_upgrades_daemon_entries_and_launchers_of_an_earlier_release(
    boinc_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What releases before the layout change wrote: entries without <output>/<pid_file>
    (sharing the lock of the project's own validator) and launchers of the old module."""
    project = boinc_project
    project.add_daemon("sample_bitwise_validator -d 3 --app labcheck --sleep_interval 1")
    setup_project(project.root)
    cmds = daemon_commands()
    text = project.config_path.read_text()
    for role in ("assimilator", "validator"):
        text = text.replace(f"<output>pyboinc_{role}.log</output>", "").replace(
            f"<pid_file>pyboinc_{role}.pid</pid_file>", "")
    project.config_path.write_text(text)
    for name in ("pyboinc_assimilator", "pyboinc_compare"):
        script = project.bin_dir / name
        script.write_text(script.read_text().replace("boinc_executor.server.daemonconf",
                                                     "boinc_executor.daemonconf"))
    assert project.run("start").returncode == 0
    started = [d.cmd for d in running_daemons(project.config)]
    assert cmds["validator"] not in started, "the old entry lost its lock"

    report = setup_project(project.root)
    upgraded = [c for c in report.changes if "an earlier release's entry, upgraded" in c]
    assert len(upgraded) == 2
    assert "sample_bitwise_validator.lock, the lock of `sample_bitwise_validator -d 3 --app " \
           "labcheck --sleep_interval 1`, so it could never run" in upgraded[1]
    assert sum("upgraded from an earlier release" in c for c in report.changes) == 2
    assert any("restart-daemons" in t and "boinccmd" in t for t in report.todo)
    doc = ET.parse(project.config_path).getroot()
    ours = [d for d in doc.iterfind("daemons/daemon") if "pyboinc" in d.findtext("cmd", "")]
    assert [(d.findtext("output"), d.findtext("pid_file")) for d in ours] == [
        ("pyboinc_assimilator.log", "pyboinc_assimilator.pid"),
        ("pyboinc_validator.log", "pyboinc_validator.pid")]
    assert setup_project(project.root).changes == [], "idempotent after the upgrade"

    assert project.run("start").returncode == 0
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")
    host = VolunteerHost(project, client_dir=tmp_path / "client")
    with host.running(), boinc_executor.BoincExecutor(project_dir=project.root) as ex:
        assert ex.submit(pow, 3, 2).result(timeout=60) == 9
