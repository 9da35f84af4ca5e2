"""The server-side daemons, run exactly as BOINC 1.6.2 runs them (boinc-facts §5).

The handlers (``boinc_executor.server.assimilator`` and ``.compare``), through their
scripts ``daemons/pyboinc_assimilator.py`` and ``daemons/pyboinc_compare.py``, are
installed as launchers in the stand-in project's ``bin/`` and started through the shell with cwd
``<project>/tmp_<host>``: by hand with the argv script_assimilator/script_validator
would pass, and by the harness's own script_assimilator and script_validator in full
job cycles. The app is a tiny ``/bin/sh`` program that copies its data file to its
output, so a test decides byte for byte what a "volunteer" uploads.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from boinc_executor import errors, protocol
from boinc_executor.backends.db import Database
from boinc_executor.config import ProjectConfig
from boinc_executor.protocol.decoding import TypePolicy
from boinc_executor.server.templates import input_template, output_template
from tests.boinc_harness.backend import output_files
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost

pytestmark = pytest.mark.boinc

REPO = Path(__file__).resolve().parents[1]
APP = r"""#!/bin/sh
# The test's volunteer: its output is its data file, unless the data asks it to fail.
if head -c 4 data.pkl | grep -q FAIL; then
    echo "worker exploded on $(head -c 40 data.pkl)" >&2
    exit 7
fi
cp data.pkl result.pkl
echo 0 > boinc_finish_called
"""
PROGRAM = "pyb_fn_0123456789abcdef0123456789abcdef.pkl"


def launcher(path: Path, module: str, *options: str) -> None:
    """``bin/<name>``: what setup-project installs, a shell script running the module."""
    opts = "".join(f" {o}" for o in options)
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "daemons" / module}{opts} "$@"\n')
    path.chmod(0o755)


@pytest.fixture
def project(boinc_project: Project) -> Project:
    """A harness project with app pyboinc (the contract's templates), a bitwise validator,
    the daemon launchers in bin/ and the pyboinc_batch table; no assimilator daemon yet."""
    p = boinc_project
    p.add_app("pyboinc")
    assert p.run("xadd").returncode == 0
    app_dir = p.root / "apps/pyboinc/1.0/x86_64-pc-linux-gnu"
    app_dir.mkdir(parents=True)
    (app_dir / "pyboinc_1.0.sh").write_text(APP)
    (app_dir / "pyboinc_1.0.sh").chmod(0o755)
    assert p.run("update_versions", "--noconfirm").returncode == 0
    (p.root / "templates/pyboinc_in").write_text(input_template())
    (p.root / "templates/pyboinc_out").write_text(output_template())
    p.add_daemon("sample_bitwise_validator -d 3 --app pyboinc --sleep_interval 1")
    launcher(p.bin_dir / "pyboinc_assimilator", "pyboinc_assimilator.py")
    launcher(p.bin_dir / "pyboinc_compare", "pyboinc_compare.py")
    with Database(ProjectConfig.load(p.root)) as db:
        db.ensure_batch_table()
    staged = p.download_path(PROGRAM)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"not used by the test app\n")
    return p


def new_batch(project: Project, batch_dir: Path) -> int:
    """A batch as the BOINC backend creates it: ``batch`` row, batch record, ``new/``."""
    (batch_dir / protocol.NEW).mkdir(parents=True)
    with Database(ProjectConfig.load(project.root)) as db:
        app_id = db.app_id("pyboinc")
        assert app_id is not None
        return db.create_batch(name=batch_dir.name, app_id=app_id, user_id=1, batch_dir=batch_dir)


def submit(project: Project, name: str, data: bytes, batch: int, *options: str) -> int:
    """Stage ``data`` as the job's data file and create_work it; returns the WU id."""
    staged = project.download_path(f"{name.replace('/', '_')}.pkl")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    done = project.run("create_work", "--appname", "pyboinc", "--batch", str(batch),
                       *options, "--wu_name", name, PROGRAM, staged.name)
    assert done.returncode == 0, done.stderr
    wu = project.workunit(name)
    assert wu is not None
    return int(wu["id"])


def wu_ready(project: Project, name: str) -> Callable[[], bool]:
    """Waiting for the assimilator: canonical result or error, assimilate_state 1 or 2."""
    def ready() -> bool:
        wu = project.workunit(name) or {}
        return wu.get("assimilate_state", 0) >= 1
    return ready


def output_path(project: Project, wu_name: str) -> Path:
    """The canonical result's output in the upload hierarchy (get_output_file_paths)."""
    wu = project.workunit(wu_name)
    assert wu is not None and wu["canonical_resultid"]
    (result,) = project.query("select * from result where id=%s", wu["canonical_resultid"])
    ((physical, _, _),) = output_files(result)
    return project.upload_path(physical)


def assimilate(project: Project, *args: object, cwd: Path | None = None,
               script: str = "../bin/pyboinc_assimilator") -> subprocess.CompletedProcess[str]:
    """``system()`` as script_assimilator 1.6.2 does it (note the double space)."""
    command = f"{script}  " + " ".join(str(a) for a in args)
    return subprocess.run(command, shell=True, cwd=cwd or project.tmp_dir, env=dict(os.environ),
                          capture_output=True, text=True, check=False)


def record(job: str, values: list[Any]) -> bytes:
    """A runner's result record for ``job``."""
    return protocol.encode_result(job, [(True, v) for v in values])


def delivered(batch_dir: Path) -> list[Path]:
    return sorted((batch_dir / protocol.NEW).iterdir())


def all_records(root: Path) -> list[Path]:
    return sorted(root.rglob("*.result"))


class Hostile:
    """Unpickling this runs ``touch <marker>``: what a hostile volunteer would upload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def hostile_record(job: str, marker: Path) -> bytes:
    header = {"job": job, "status": "ok", "calls": 1, "host": "evil", "python": "3",
              "stdout": "", "stderr": "", "error": None}
    payload = pickle.dumps([(True, Hostile(marker))])
    return protocol.encode_frame("result", header, payload)


# --------------------------------------------------------------------------- assimilator


def test_success_delivers_the_record_byte_for_byte(project: Project,
                                                    volunteer_host: VolunteerHost,
                                                    tmp_path: Path) -> None:
    batch_dir = tmp_path / "batch"
    batch = new_batch(project, batch_dir)
    job = f"pyb_{batch}_0"
    data = record(job, [1.5, "two", [3]])
    wu_id = submit(project, job, data, batch)
    volunteer_host.run_until(wu_ready(project, job))
    out = output_path(project, job)
    done = assimilate(project, wu_id, out)
    assert done.returncode == 0, done.stderr
    (target,) = delivered(batch_dir)  # nothing else, no temp file left behind
    assert target.name == f"{job}.{job}_0.result"
    assert target.read_bytes() == data
    assert f"[WU#{wu_id} {job}]" in done.stderr and "delivered" in done.stderr
    assert len(done.stderr.splitlines()) == 1, "one log line per work unit"
    # The launcher may name the project instead (cwd is then irrelevant).
    target.unlink()
    launcher(project.bin_dir / "with_project", "pyboinc_assimilator.py", "--project",
             str(project.root))
    done = assimilate(project, wu_id, out, cwd=tmp_path,
                      script=str(project.bin_dir / "with_project"))
    assert done.returncode == 0, done.stderr
    assert [p.read_bytes() for p in delivered(batch_dir)] == [data]


def test_error_form_writes_an_error_record(project: Project, volunteer_host: VolunteerHost,
                                           tmp_path: Path) -> None:
    batch_dir = tmp_path / "batch"
    batch = new_batch(project, batch_dir)
    job = f"pyb_{batch}_3"
    wu_id = submit(project, job, b"FAIL please", batch)
    volunteer_host.run_until(wu_ready(project, job))
    wu = project.workunit(job)
    assert wu is not None and wu["error_mask"] == 8
    done = assimilate(project, "--error", 8, job, wu_id, batch)
    assert done.returncode == 0, done.stderr
    (target,) = delivered(batch_dir)
    assert target.name == f"{job}.error.result"
    rec = protocol.decode_result(target.read_bytes(), TypePolicy(), expect_job=job,
                                 expect_calls=0)
    assert not rec.ok and rec.error is not None
    assert (rec.error["type"], rec.error["error_mask"], rec.error["exit_status"]) == (
        "WorkunitError", 8, 7)
    assert "worker exploded on FAIL please" in rec.error["stderr_tail"]
    exc = errors.rebuild_exception(rec.error)
    assert isinstance(exc, errors.WorkunitError)
    assert (exc.error_mask, exc.exit_status) == (8, 7)
    assert "too many results" in str(exc) and "status 7" in str(exc)


def test_bad_outputs_become_error_records(project: Project, volunteer_host: VolunteerHost,
                                          tmp_path: Path) -> None:
    """Oversized, symlinked, FIFO, garbage and other-job outputs: refused, exit 0."""
    batch_dir = tmp_path / "batch"
    batch = new_batch(project, batch_dir)
    job = f"pyb_{batch}_0"
    wu_id = submit(project, job, record(job, [1]), batch)
    volunteer_host.run_until(wu_ready(project, job))
    out = output_path(project, job)
    secret = tmp_path / "secret"
    secret.write_bytes(record(job, ["a file the assimilator must not follow"]))

    def oversized() -> None:
        with out.open("wb") as fh:  # sparse: the size check comes before any read
            fh.truncate(protocol.DEFAULT_MAX_RESULT_BYTES + 1)

    cases: list[tuple[Callable[[], None], str]] = [
        (oversized, "over the"),
        (lambda: out.symlink_to(secret), "symbolic link"),
        (lambda: os.mkfifo(out), "not a regular file"),
        (lambda: out.write_bytes(b"\x80garbage" * 100), "not a boinc-executor result"),
        (lambda: out.write_bytes(record(f"pyb_{batch}_1", [1])), "names job"),
        (lambda: None, "cannot read"),  # the output is gone
    ]
    for make, why in cases:
        out.unlink(missing_ok=True)
        make()
        done = assimilate(project, wu_id, out)
        assert done.returncode == 0, (why, done.stderr)
        (target,) = delivered(batch_dir)
        assert target.name == f"{job}.error.result"
        rec = protocol.decode_result(target.read_bytes(), TypePolicy(), expect_job=job,
                                     expect_calls=0)
        assert rec.error is not None and why in rec.error["message"], (why, rec.error)
        assert "refused output" in done.stderr
        target.unlink()
    assert secret.read_bytes().startswith(b"BOINC-EXECUTOR/result/")


def test_names_and_batches_pointing_elsewhere_write_nothing(project: Project,
                                                           tmp_path: Path) -> None:
    batch_dir = tmp_path / "inside" / "batch"
    batch = new_batch(project, batch_dir)
    other = new_batch(project, tmp_path / "other")
    escaped = tmp_path / "inside" / "new"  # where "../" in a name would land
    escaped.mkdir()
    evil_dir = tmp_path / "evil"
    (evil_dir / protocol.NEW).mkdir(parents=True)
    # A batch record whose new/ is a symlink out of its BATCH_DIR.
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / protocol.NEW).symlink_to(evil_dir / protocol.NEW)
    link_batch = new_batch(project, tmp_path / "placeholder")
    with Database(ProjectConfig.load(project.root)) as db:
        db.set_batch_dir(link_batch, linked)
        relative = new_batch(project, tmp_path / "relative")
        db.set_batch_dir(relative, Path("relative/dir"))
    # (name, its WU's batch, exit status): names nobody can want are acknowledged (0); a
    # BATCH_DIR that exists but cannot take the record stops the daemon (1) to keep it.
    cases = [
        (f"../pyb_{batch}_0", batch, 0),  # not a job name
        (f"pyb_{batch}_0/../../x", batch, 0),
        (f"pyb_{other}_1", batch, 0),  # names another batch than its WU's
        ("pyb_0_1", 0, 0),  # batch 0: no batch record
        ("pyb_99999_1", 99999, 0),  # unknown batch
        (f"pyb_{link_batch}_1", link_batch, 1),
        (f"pyb_{relative}_1", relative, 1),
    ]
    upload = project.upload_path("evil_upload")
    upload.parent.mkdir(parents=True, exist_ok=True)
    for name, wu_batch, status in cases:
        wu_id = submit(project, name, b"x", wu_batch)
        upload.write_bytes(record(name, [1]) if protocol.parse_job_name(name) else b"x")
        for args in ((wu_id, upload), ("--error", 8, name, wu_id, wu_batch)):
            done = assimilate(project, *args)
            assert done.returncode == status, (name, done.stderr)
            said = "not delivered" if status == 0 else "CANNOT DELIVER"
            assert said in done.stderr and "skipped" not in done.stderr, (name, done.stderr)
    assert all_records(tmp_path) == []
    assert list(escaped.iterdir()) == [] and list((evil_dir / protocol.NEW).iterdir()) == []
    assert list((project.tmp_dir).iterdir()) == []


def test_removed_batch_dir_is_acknowledged(project: Project, volunteer_host: VolunteerHost,
                                           tmp_path: Path) -> None:
    """A removed BATCH_DIR wants nothing: exit 0, and the log says the output is dropped."""
    batch_dir = tmp_path / "batch"
    batch = new_batch(project, batch_dir)
    job = f"pyb_{batch}_0"
    wu_id = submit(project, job, record(job, [1]), batch)
    volunteer_host.run_until(wu_ready(project, job))
    shutil.rmtree(batch_dir)  # the batch was retired and its directory deleted
    done = assimilate(project, wu_id, output_path(project, job))
    assert done.returncode == 0
    assert "was removed" in done.stderr and "not delivered" in done.stderr
    assert not batch_dir.exists()
    done = assimilate(project, "--error", 8, job, wu_id, batch)
    assert done.returncode == 0 and "not delivered" in done.stderr


# The daemon user without root's override of file modes (CAP_DAC_OVERRIDE), so that a
# mode the daemon user may not write through refuses it as it refuses any other user.
AS_DAEMON_USER = "setpriv --bounding-set=-dac_override,-dac_read_search ../bin/pyboinc_assimilator"


@pytest.mark.parametrize("how", ["not-a-directory", "unwritable"])
def test_unusable_new_dir_stops_the_daemon_and_keeps_the_result(
    project: Project, volunteer_host: VolunteerHost, tmp_path: Path, how: str
) -> None:
    """Issue 11 item 13. Invariant: no finished result is lost. A BATCH_DIR whose new/ cannot
    take the record (not a directory, or a directory the daemon user may not write to) is
    not acknowledged (exit 1, so BOINC keeps the output); once the operator repairs new/,
    the retried handler delivers the very same record."""
    if how == "unwritable" and (os.geteuid() != 0 or shutil.which("setpriv") is None):
        pytest.skip("dropping CAP_DAC_OVERRIDE needs root and setpriv (CI runs as root)")
    batch_dir = tmp_path / "batch"
    batch = new_batch(project, batch_dir)
    job = f"pyb_{batch}_0"
    wu_id = submit(project, job, record(job, [1]), batch)
    volunteer_host.run_until(wu_ready(project, job))
    new = batch_dir / protocol.NEW
    script = AS_DAEMON_USER if how == "unwritable" else "../bin/pyboinc_assimilator"
    if how == "unwritable":
        new.chmod(0o555)
    else:
        new.rmdir()
        new.write_text("not a directory")
    done = assimilate(project, wu_id, output_path(project, job), script=script)
    assert done.returncode == 1, done.stderr
    assert "CANNOT DELIVER" in done.stderr and "retried after bin/start" in done.stderr
    assert "skipped" not in done.stderr
    if how == "unwritable":
        assert f"cannot write into {new} (Permission denied)" in done.stderr, done.stderr
    assert output_path(project, job).is_file()
    assert not new.is_dir() or list(new.iterdir()) == []
    if how == "unwritable":
        new.chmod(0o755)
    else:
        new.unlink()
        new.mkdir()
    done = assimilate(project, wu_id, output_path(project, job), script=script)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in new.iterdir()] == [protocol.record_file_name(job, f"{job}_0")]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_faults_stop_the_daemon(project: Project, tmp_path: Path) -> None:
    batch = new_batch(project, tmp_path / "batch")
    config = project.config_path
    text = config.read_text()
    host_line = text[text.index("<db_host>"):text.index("</db_host>")]
    down = text.replace(host_line, f"<db_host>127.0.0.1:{closed_port()}")
    down = "\n".join(line for line in down.splitlines() if "<db_port>" not in line)
    config.write_text(down)
    done = assimilate(project, "--error", 8, f"pyb_{batch}_0", 1, batch)
    assert done.returncode == 1
    assert "SERVER FAULT" in done.stderr and "cannot reach the BOINC database" in done.stderr
    upload = project.upload_path("x")
    config.unlink()
    done = assimilate(project, 1, upload)
    assert done.returncode == 1
    assert "SERVER FAULT" in done.stderr and "no config.xml" in done.stderr
    config.write_text(text)
    # Named tokens (broken in 1.6.x) arrive as no arguments at all: a configuration fault.
    done = assimilate(project)
    assert done.returncode == 2 and "bare name" in done.stderr
    assert assimilate(project, "--error", 8, "x").returncode == 2
    assert all_records(tmp_path) == []


def test_full_cycle_hostile_output_never_runs_and_never_stops(project: Project,
                                                              volunteer_host: VolunteerHost,
                                                              tmp_path: Path) -> None:
    project.add_daemon("script_assimilator -d 3 --app pyboinc --sleep_interval 1 "
                       "--script pyboinc_assimilator")
    batch_dir = tmp_path / "batch"
    batch = new_batch(project, batch_dir)
    marker = tmp_path / "pwned"
    jobs = {f"pyb_{batch}_{i}": data for i, data in enumerate([
        hostile_record(f"pyb_{batch}_0", marker),
        b"BOINC-EXECUTOR/result/1\n" + b"[" * 100_000 + b"\n",  # a header json cannot parse
        record(f"pyb_{batch}_2", [0.25]),
        b"FAIL",
    ])}
    for job, data in jobs.items():
        submit(project, job, data, batch)

    def done() -> bool:
        return all((project.workunit(j) or {}).get("file_delete_state") == 2 for j in jobs)

    volunteer_host.run_until(done)  # AssimilatorStopped would be raised if it exited
    names = [p.name for p in delivered(batch_dir)]
    assert names == sorted([f"pyb_{batch}_0.pyb_{batch}_0_0.result",
                            f"pyb_{batch}_1.error.result",
                            f"pyb_{batch}_2.pyb_{batch}_2_0.result",
                            f"pyb_{batch}_3.error.result"])
    hostile = batch_dir / protocol.NEW / names[0]
    assert hostile.read_bytes() == jobs[f"pyb_{batch}_0"], "delivered untouched, never decoded"
    with pytest.raises(errors.UnsafeResultError):
        protocol.decode_result(hostile.read_bytes(), TypePolicy(), expect_job=f"pyb_{batch}_0",
                               expect_calls=1)
    assert not marker.exists()
    log = (project.log_dir / "script_assimilator.log").read_text()
    assert log.count("[pyboinc_assimilator]") == 4


def test_full_cycle_replicated_floats_with_the_compare_script(project: Project,
                                                               volunteer_host: VolunteerHost,
                                                               tmp_path: Path) -> None:
    """min_quorum 2 under script_validator + pyboinc_compare, as setup-project configures it:
    results 1e-12 apart agree (bitwise could not), results 1e-3 apart never do."""
    config = project.config_path
    config.write_text(config.read_text().replace(
        "sample_bitwise_validator -d 3 --app pyboinc --sleep_interval 1",
        "script_validator -d 3 --app pyboinc --sleep_interval 1 "
        "--init_script pyboinc_compare --compare_script pyboinc_compare"))
    project.add_daemon("script_assimilator -d 3 --app pyboinc --sleep_interval 1 "
                       "--script pyboinc_assimilator")
    batch_dir = tmp_path / "batch"
    batch = new_batch(project, batch_dir)
    close, far = f"pyb_{batch}_0", f"pyb_{batch}_1"
    shift = {close: 1e-12, far: 1e-3}
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def second_host_differs(data: bytes) -> bytes:
        job = protocol.decode_frame(data, "result")[0]["job"]
        with lock:
            seen[job] = seen.get(job, 0) + 1
            again = seen[job] > 1
        return record(job, [1.0 + shift[job], "same"]) if again else data

    volunteer_host.tamper_output(second_host_differs)
    replicated = ("--min_quorum", "2", "--target_nresults", "2", "--max_total_results", "2",
                  "--max_success_results", "2")
    for job in (close, far):
        submit(project, job, record(job, [1.0, "same"]), batch, *replicated)
    volunteer_host.run_until(lambda: all(
        (project.workunit(j) or {}).get("assimilate_state") == 2 for j in (close, far)))
    assert [r["validate_state"] for r in project.results(close)] == [1, 1]
    # Either result may be canonical: the host ran both at once, either one was "second".
    (ok,) = (batch_dir / protocol.NEW).glob(f"{close}.{close}_*.result")
    assert ok.read_bytes() in (record(close, [1.0, "same"]), record(close, [1.0 + 1e-12, "same"]))
    wu = project.workunit(far)
    assert wu is not None and wu["canonical_resultid"] == 0 and wu["error_mask"] & 8
    failed = batch_dir / protocol.NEW / f"{far}.error.result"
    header, _ = protocol.decode_frame(failed.read_bytes(), "result")
    assert header["error"]["error_mask"] == wu["error_mask"]


# --------------------------------------------------------------------------- comparator


@pytest.fixture
def compare_dir(tmp_path: Path) -> Path:
    """A project-like layout: bin/pyboinc_compare and the daemons' cwd tmp_host/."""
    root = tmp_path / "proj"
    (root / "bin").mkdir(parents=True)
    (root / "tmp_host").mkdir()
    launcher(root / "bin/pyboinc_compare", "pyboinc_compare.py")
    return root


def compare(root: Path, *records: bytes, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Write the records under BOINC's output names and run the script as script_validator."""
    paths = []
    for i, data in enumerate(records):
        path = root / "upload" / f"pyb_1_0_{i}_r{1000 + i}_0"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append(str(path))
    return subprocess.run("../bin/pyboinc_compare  " + " ".join(paths), shell=True,
                          cwd=root / "tmp_host", env={**os.environ, **(env or {})},
                          capture_output=True, text=True, check=False)


JOB = "pyb_1_0"


@pytest.mark.parametrize(("a", "b", "rc"), [
    ([1.0, "x", {"k": (1, 2.5)}], [1.0, "x", {"k": (1, 2.5)}], 0),
    ([1.0, [2.0, complex(1, 1)]], [1.0 + 1e-12, [2.0 - 1e-12, complex(1 + 1e-12, 1)]], 0),
    ([float("nan"), {"a": 0.0}], [float("nan"), {"a": 0.0}], 0),
    ([1.0], [1.0001], 1),
    ([1], [1.0], 1),  # types differ
    (["x"], ["y"], 1),
    ([{"a": 1.0}], [{"b": 1.0}], 1),
    ([(1.0, 2.0)], [(1.0, 2.0, 3.0)], 1),
])
def test_compare_values(compare_dir: Path, a: list[Any], b: list[Any], rc: int) -> None:
    done = compare(compare_dir, record(JOB, a), record(JOB, b))
    assert done.returncode == rc, done.stderr


def test_compare_tolerance_setting_and_failed_calls(compare_dir: Path) -> None:
    a, b = record(JOB, [1.0]), record(JOB, [1.0001])
    assert compare(compare_dir, a, b, env={"BOINC_EXECUTOR_COMPARE_RTOL": "1e-3"}).returncode == 0
    fail = protocol.error_info(ZeroDivisionError("division by zero"))
    other = protocol.error_info(KeyError("k"))
    same_a = protocol.encode_result(JOB, [(False, fail), (True, 2.0)])
    same_b = protocol.encode_result(JOB, [(False, {**fail, "host": "elsewhere"}), (True, 2.0)])
    differ = protocol.encode_result(JOB, [(False, other), (True, 2.0)])
    assert compare(compare_dir, same_a, same_b).returncode == 0
    assert compare(compare_dir, same_a, differ).returncode == 1
    err = protocol.encode_error_record(JOB, protocol.failure_info("JobFailedError", "bad input"))
    assert compare(compare_dir, err, err).returncode == 0
    assert compare(compare_dir, err, same_a).returncode == 1


def test_check_and_compare_refuse_malformed_and_hostile(compare_dir: Path,
                                                        tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good = record(JOB, [1.0])
    bad = [
        b"garbage",
        good[:-3],  # truncated payload
        hostile_record(JOB, marker),
        record("pyb_1_7", [1.0]),  # not the job its BOINC file name says
        protocol.encode_frame("result", {"job": JOB, "status": "ok", "calls": 2},
                              pickle.dumps([(True, 1.0)])),  # wrong number of calls
    ]
    assert compare(compare_dir, good).returncode == 0, "init script: a well-formed record"
    for data in bad:
        assert compare(compare_dir, data).returncode == 1, data[:60]
        assert compare(compare_dir, good, data).returncode == 1, data[:60]
        assert compare(compare_dir, data, good).returncode == 1, data[:60]
    assert not marker.exists()
    usage = compare(compare_dir, good, good, good)
    assert usage.returncode == 3 and "unusable arguments" in usage.stderr
    assert compare(compare_dir).returncode == 3


def test_argument_forms() -> None:
    """Empty tokens (BOINC's double space, if ever passed through) and --project forms."""
    from boinc_executor.server.assimilator import parse_args

    assert parse_args(["", "12", "/u/a"]) == (None, ["12", "/u/a"])
    assert parse_args(["--project", "/p", "", "12", "/u/a"]) == ("/p", ["12", "/u/a"])
    assert parse_args(["--project=/p", "--error", "8", "pyb_1_0", "12", "1"]) == (
        "/p", ["--error", "8", "pyb_1_0", "12", "1"])
    assert parse_args([]) is None
    assert parse_args(["wu_id", "files"]) is None
    assert parse_args(["--error", "8", "pyb_1_0", "x", "1"]) is None


def test_structural_comparison() -> None:
    from collections import Counter, OrderedDict, deque

    from boinc_executor.server.compare import close

    assert close(OrderedDict(a=1.0), OrderedDict(a=1.0 + 1e-12), 1e-9, 0)
    assert close(deque([1.0, (2.0,)]), deque([1.0, (2.0 + 1e-12,)]), 1e-9, 0)
    assert close({1, 2}, {2, 1}, 1e-9, 0) and not close({1.0}, {1.0 + 1e-12}, 1e-9, 0)
    assert close(Counter("ab"), Counter("ba"), 1e-9, 0)
    assert not close(True, 1, 1e-9, 0) and not close((1.0,), [1.0], 1e-9, 0)
    assert close(0.0, 1e-12, 1e-9, 1e-9) and not close(0.0, 1e-12, 1e-9, 0)
    assert close(complex(float("nan"), 1), complex(float("nan"), 1), 1e-9, 0)
    deep: list[Any] = []
    for _ in range(1000):
        deep = [deep]
    assert not close(deep, deep, 1e-9, 0), "too deep to compare is not a match"
