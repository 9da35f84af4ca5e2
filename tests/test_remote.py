"""The remote backend against the stand-in web pages (tests/remote_harness) and volunteer.

Everything runs over real HTTP on a loopback port, on the real MariaDB with the
harness's create_work, daemons and client: kill -9 and re-run, resume from another
directory, cancel, refused keys, a server that stops mid-batch, uploads over PHP's
limits, replies full of PHP warnings, outputs that outlive the assimilator, failed
jobs, and that the authenticator is never written down.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor
from boinc_executor.backends.remote import RemoteBackend
from boinc_executor.backends.remote_ops import abort_remote_batch, retire_remote_batch
from boinc_executor.backends.remote_rpc import (
    RemoteAuthError,
    RemotePhpError,
    RemoteRpcError,
    RemoteUnavailableError,
    RpcClient,
)
from boinc_executor.errors import ConfigError, JobLostError, SubmissionError, WorkunitError
from boinc_executor.server.remote import grant_submit, purge_retired_outputs
from tests import jobs
from tests.boinc_harness.backend import output_files
from tests.boinc_harness.common import read_config
from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import VolunteerHost
from tests.remote_harness.web import WebServer

pytestmark = pytest.mark.boinc

REPO_ROOT = Path(__file__).resolve().parents[1]

SUBMITTER = """\
import sys, time
from boinc_executor import BoincExecutor
from tests import jobs
ex = BoincExecutor(batch_dir=sys.argv[1])
print(ex.batch_id, flush=True)
results = ex.map(jobs.square, range(int(sys.argv[2])), chunksize=1)
time.sleep(600)
"""


@pytest.fixture(autouse=True)
def _volunteer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("BOINC_EXECUTOR_POLL_INTERVAL", "0.1")


@pytest.fixture
def host(remote_project: Project, tmp_path: Path) -> VolunteerHost:
    return VolunteerHost(
        remote_project, client_dir=tmp_path / "client", ncpus=2, max_tasks_per_rpc=2
    )


def _submit_then_kill(
    project: Project, web: WebServer, key: str, batch_dir: Path, n: int
) -> int:
    """Run SUBMITTER for ``n`` calls until its ``n`` work units exist, then kill it.

    Returns the batch ID it printed.
    """
    script = batch_dir.parent / "submit.py"
    script.write_text(SUBMITTER)
    env = dict(os.environ, BOINC_EXECUTOR_SERVER=web.url, BOINC_EXECUTOR_AUTHENTICATOR=key)
    first = subprocess.Popen(
        [sys.executable, str(script), str(batch_dir), str(n)], env=env, stdout=subprocess.PIPE
    )
    try:
        assert first.stdout is not None
        batch_id = int(first.stdout.readline())
        wait_for(lambda: len(wu_names(project)) == n)
    finally:
        first.kill()
        first.wait()
        assert first.stdout is not None
        first.stdout.close()
    return batch_id


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def wu_names(project: Project, batches: list[int] | None = None) -> list[str]:
    rows = project.query("select name, batch from workunit")
    return [r["name"] for r in rows if batches is None or r["batch"] in batches]


def add_user(project: Project, user_id: int) -> str:
    key = f"key{user_id}x{os.getpid()}"
    conn = project.connect()
    try:
        conn.cursor().execute(
            "insert into user (id, create_time, email_addr, name, authenticator, country, "
            "postal_code, total_credit, expavg_credit, expavg_time, global_prefs, project_prefs, "
            "teamid, venue, url, send_email, show_hosts, posts, seti_id, seti_nresults, "
            "seti_last_result_time, seti_total_cpu, signature, has_profile, cross_project_id, "
            "passwd_hash, email_validated, donated, login_token, login_token_time, "
            "previous_email_addr, email_addr_change_time) values (%s, 0, %s, %s, %s, '', '', "
            "0, 0, 0, '', '', 0, '', '', 0, 0, 0, 0, 0, 0, 0, '', 0, '', '', 1, 0, '', 0, '', 0)",
            (user_id, f"u{user_id}@example.org", f"user{user_id}", key),
        )
    finally:
        conn.close()
    return key


def submit_errors(web: WebServer) -> list[tuple[str, str]]:
    return [c for c in web.calls if c[0] == "submit_batch" and c[1]]


# --------------------------------------------------------------------------- configuration


def test_authenticator_from_a_file_named_in_the_environment(
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(admin_key + "\n")
    monkeypatch.setenv("BOINC_EXECUTOR_SERVER", remote_web.url)
    monkeypatch.setenv("BOINC_EXECUTOR_AUTHENTICATOR_FILE", str(key_file))
    with host.running(), BoincExecutor(batch_dir=tmp_path / "b") as ex:
        assert ex.backend == "remote"
        assert ex.submit(jobs.add, 1, 2).result(timeout=60) == 3


def test_missing_key_and_bad_url_are_config_errors(
    remote_web: WebServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="BOINC_EXECUTOR_AUTHENTICATOR"):
        BoincExecutor(server=remote_web.url, batch_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="master URL"):
        BoincExecutor(server="ftp://example.org/x", authenticator="k", batch_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="credentials"):
        BoincExecutor(server="https://u:p@example.org/x/", authenticator="k")
    with pytest.raises(ConfigError, match="either project_dir"):
        BoincExecutor(server=remote_web.url, authenticator="k", project_dir=tmp_path)


def test_unknown_and_unauthorised_keys_are_refused_clearly(
    remote_project: Project, remote_web: WebServer, host: VolunteerHost, tmp_path: Path
) -> None:
    with pytest.raises(RemoteAuthError, match="does not know this authenticator") as info:
        BoincExecutor(server=remote_web.url, authenticator="nonsense-key", batch_dir=tmp_path / "a")
    assert "nonsense-key" not in str(info.value)
    key = add_user(remote_project, 2)
    with pytest.raises(RemoteAuthError, match=r"no submit access.*grant-submit") as info:
        BoincExecutor(server=remote_web.url, authenticator=key, batch_dir=tmp_path / "b")
    assert key not in str(info.value)
    assert "may now submit" in grant_submit(remote_project.root, "u2@example.org")
    assert "nothing changed" in grant_submit(remote_project.root, "2")
    (us,) = remote_project.query("select * from user_submit where user_id=2")
    assert us["submit_all"] == 0
    with (
        host.running(),
        BoincExecutor(server=remote_web.url, authenticator=key, batch_dir=tmp_path / "c") as ex,
    ):
        assert ex.submit(jobs.square, 5).result(timeout=60) == 25


# --------------------------------------------------------------------------- submission


def test_uploads_keep_to_phps_limits(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
) -> None:
    blob = os.urandom(600_000)
    with (
        host.running(),
        BoincExecutor(
            server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b"
        ) as ex,
    ):
        futures = [ex.submit(jobs.length, blob + bytes([i])) for i in range(15)]
        assert [f.result(timeout=120) for f in futures] == [600_001] * 15
        with pytest.raises(SubmissionError, match="2097152-byte limit"):
            ex.submit(jobs.length, b"x" * 3_000_000).result(timeout=60)
    uploads = [c for c in web_calls(remote_web) if c[0] == "upload_files"]
    assert len(uploads) >= 2 and not any(error for _, error in uploads)
    assert not submit_errors(remote_web)
    # The stand-in enforces what PHP does to a client that ignores the limits.
    rpc = RpcClient(remote_web.url, admin_key)
    with pytest.raises(RemoteRpcError, match=r"uploaded files \(20\) doesn't agree"):
        rpc.upload_files([(f"jf_{i:032x}", b"x") for i in range(21)])


def web_calls(web: WebServer) -> list[tuple[str, str]]:
    return list(web.calls)


def test_a_known_file_is_never_uploaded_again(
    remote_web: WebServer, admin_key: str, host: VolunteerHost, tmp_path: Path
) -> None:
    with host.running():
        for run in range(2):
            with BoincExecutor(
                server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / f"b{run}"
            ) as ex:
                assert ex.submit(jobs.add, 1, 1).result(timeout=60) == 2
    assert not [c for c in remote_web.calls if c[0] == "upload_files" and c[1]]
    # The stand-in models the crash a second upload would cause (facts §10.1.7).
    rpc = RpcClient(remote_web.url, admin_key)
    rpc.upload_files([("jf_" + "a" * 32, b"once")])
    with pytest.raises(RemotePhpError, match="Duplicate entry"):
        rpc.upload_files([("jf_" + "a" * 32, b"once")])


def test_file_deleter_spares_the_shared_program_and_a_lost_input_fails_one_job(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
) -> None:
    # file_deleter deletes a finished WU's inputs even when others share them (§10.1.9).
    rpc = RpcClient(remote_web.url, admin_key)
    with BoincExecutor(
        server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b"
    ) as ex:
        with host.running():
            assert ex.submit(jobs.square, 2).result(timeout=60) == 4
            deleted = "select xml_doc from workunit where file_delete_state=2"
            wait_for(lambda: bool(remote_project.query(deleted)))
        (wu,) = remote_project.query(deleted)
        program, data = re.findall(r"<file_name>([^<]+)</file_name>", wu["xml_doc"])
        assert rpc.query_files([program, data]) == [data]  # <no_delete/> kept the program
        with host.running():
            assert ex.submit(jobs.square, 3).result(timeout=60) == 9
        path = read_config(remote_project.root).download_path(program)
        path.unlink()  # an operator cleaning download/ by hand
        Path(f"{path}.md5").unlink(missing_ok=True)
        with pytest.raises(JobLostError, match="not on the server"):
            ex.submit(jobs.square, 4).result(timeout=60)
    assert not submit_errors(remote_web)


def test_kill_during_submit_batch_then_rerun(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 12
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    batch_dir = tmp_path / "batch"
    env = dict(
        os.environ, BOINC_EXECUTOR_SERVER=remote_web.url, BOINC_EXECUTOR_AUTHENTICATOR=admin_key
    )
    monkeypatch.setenv("BOINC_HARNESS_CREATE_WORK_DELAY", "2")  # the server's create_work
    first = subprocess.Popen(
        [sys.executable, str(script), str(batch_dir), str(n)],
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert first.stdout is not None
        batch_id = int(first.stdout.readline())
        # submit_batch has announced the jobs (njobs) and create_work is still sleeping.
        wait_for(
            lambda: (
                remote_project.query("select njobs, state from batch where id=%s", batch_id)[0][
                    "njobs"
                ]
                == n
            )
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert first.stdout is not None
        first.stdout.close()
    with (
        host.running(),
        BoincExecutor(server=remote_web.url, authenticator=admin_key, batch_dir=batch_dir) as ex,
    ):
        assert ex.batch_id == batch_id
        assert list(ex.map(jobs.square, range(n), chunksize=1)) == [x * x for x in range(n)]
    names = wu_names(remote_project)
    assert sorted(names) == sorted(f"pyb_{batch_id}_{i}" for i in range(n))
    assert not submit_errors(remote_web)


def test_resume_from_another_directory(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id = _submit_then_kill(remote_project, remote_web, admin_key, tmp_path / "b", 6)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with (
        host.running(),
        BoincExecutor.resume(batch_id, server=remote_web.url, authenticator=admin_key) as again,
    ):
        assert again.batch_dir == tmp_path / "b"
        assert list(again.results(timeout=60)) == [x * x for x in range(6)]
    assert len(wu_names(remote_project)) == 6  # nothing submitted twice
    assert not submit_errors(remote_web)
    (state,) = remote_project.query("select state from batch where id=%s", batch_id)
    assert state["state"] == 4  # complete: retired on the server


def test_cancel_uses_abort_jobs(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    with BoincExecutor(
        server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b"
    ) as ex:
        futures = [ex.submit(jobs.wait_for_file, str(gate), i) for i in range(4)]
        assert ex.flush(timeout=60)
        wait_for(lambda: len(wu_names(remote_project)) == 4)
        assert all(f.cancel() for f in futures[2:])
        wait_for(lambda: ("abort_jobs", "") in remote_web.calls)
        gate.touch()
        with host.running():
            assert [f.result(timeout=60) for f in futures[:2]] == [0, 1]
    masks = {
        r["name"]: r["error_mask"]
        for r in remote_project.query("select name, error_mask from workunit")
    }
    assert sorted(m for m in masks.values()) == [0, 0, 16, 16]


def test_server_stopping_mid_batch_loses_nothing(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="boinc_executor")
    with BoincExecutor(
        server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b"
    ) as ex:
        first = [ex.submit(jobs.square, i) for i in range(3)]
        assert ex.flush(timeout=60)
        remote_web.stop()
        with host.running():
            wait_for(
                lambda: (
                    len(remote_project.query("select id from workunit where canonical_resultid<>0"))
                    == 3
                )
            )
            wait_for(lambda: "cannot reach the server" in caplog.text)
        remote_web.start()
        with host.running():
            assert [f.result(timeout=60) for f in first] == [0, 1, 4]
            later = ex.submit(jobs.square, 7)
            assert later.result(timeout=60) == 49
    assert "cannot reach the server" in caplog.text
    assert admin_key not in caplog.text
    assert not submit_errors(remote_web)


def test_submit_while_the_server_is_down_is_journaled_and_sent_later(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
) -> None:
    with BoincExecutor(
        server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b"
    ) as ex:
        with host.running():
            assert ex.submit(jobs.square, 1).result(timeout=60) == 1
        remote_web.stop()
        future = ex.submit(jobs.square, 3)
        time.sleep(2.0)
        assert not future.done()
        remote_web.start()
        with host.running():
            assert future.result(timeout=90) == 9
    assert len(wu_names(remote_project)) == 2


# --------------------------------------------------------------------------- replies, outputs


def test_submit_batch_whose_reply_timed_out_is_never_sent_twice(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="boinc_executor")
    # The server's create_work outlasts the client's timeout: the request took effect,
    # but the client never hears so. It must find that out, not send the jobs again.
    monkeypatch.setenv("BOINC_HARNESS_CREATE_WORK_DELAY", "3")
    rpc = RpcClient(remote_web.url, admin_key, timeout=1.0, attempts=2, backoff=0.05)
    backend = RemoteBackend(remote_web.url, admin_key, client=rpc)
    with BoincExecutor(batch_dir=tmp_path / "b", _backend=backend) as ex:
        futures = [ex.submit(jobs.square, i) for i in range(3)]
        assert ex.flush(timeout=60)
        wait_for(lambda: len(wu_names(remote_project)) == 3)
        with host.running():
            assert [f.result(timeout=90) for f in futures] == [0, 1, 4]
    assert "3 jobs wait to be submitted" in caplog.text  # the reply was lost
    assert sorted(wu_names(remote_project)) == sorted(f"pyb_{ex.batch_id}_{i}" for i in range(3))
    assert [c for c in remote_web.calls if c[0] == "submit_batch"] == [("submit_batch", "")]


def test_replies_full_of_php_warnings(
    remote_project: Project, admin_key: str, host: VolunteerHost, tmp_path: Path
) -> None:
    web = WebServer(remote_project.root, noisy=True).start()
    try:
        with (
            host.running(),
            BoincExecutor(server=web.url, authenticator=admin_key, batch_dir=tmp_path / "b") as ex,
        ):
            assert list(ex.map(jobs.square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
            with pytest.raises(KeyError):
                ex.submit(jobs.raise_key_error, "k").result(timeout=60)
    finally:
        web.stop()


def test_failed_job_comes_back_with_mask_and_exit_status(
    remote_web: WebServer, admin_key: str, host: VolunteerHost, tmp_path: Path
) -> None:
    host.fail_next(4, exit_code=7)  # pyboinc_remote_in allows 3 errors in 4 results
    with (
        host.running(),
        BoincExecutor(
            server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b"
        ) as ex,
    ):
        with pytest.raises(WorkunitError) as info:
            ex.submit(jobs.square, 4).result(timeout=120)
    assert info.value.error_mask & 2
    assert info.value.exit_status == 7
    assert "BOINC gave up" in str(info.value)
    assert ("query_completed_job", "fatal: SQL syntax") not in remote_web.calls


def test_lost_output_comes_back_with_the_jobs_stderr_unescaped(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
) -> None:
    ex = BoincExecutor(server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b")
    future = ex.submit(jobs.print_and_return, 6)
    assert ex.flush(timeout=60)
    remote_web.stop()  # the laptop cannot fetch while the job runs and its output goes
    with host.running():
        done = "select id from workunit where canonical_resultid<>0"
        wait_for(lambda: bool(remote_project.query(done)))
    (result,) = remote_project.query(
        "select r.* from result r join workunit w on w.canonical_resultid=r.id"
    )
    (name, _, _) = output_files(result)[0]
    read_config(remote_project.root).upload_path(name).unlink()  # as a project without setup
    remote_web.start()
    with pytest.raises(WorkunitError, match="no longer has its output") as info:
        future.result(timeout=60)
    ex.shutdown()
    # query_completed_job's stderr_out is htmlspecialchars-escaped in a CDATA (§10.3.5).
    assert "<stderr_txt>" in info.value.stderr_tail
    assert "&lt;" not in info.value.stderr_tail
    assert ("query_completed_job", "") in remote_web.calls


def test_outputs_outlive_the_assimilator_until_retired_and_purged(
    remote_project: Project,
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
) -> None:
    rpc = RpcClient(remote_web.url, admin_key)
    ex = BoincExecutor(server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b")
    future = ex.submit(jobs.square, 9)
    assert ex.flush(timeout=60)
    with host.running():
        wait_for(
            lambda: bool(remote_project.query("select id from result where file_delete_state=2"))
        )
        assert future.result(timeout=60) == 81
    name = f"pyb_{ex.batch_id}_0"
    (wu,) = remote_project.query("select * from workunit where name=%s", name)
    assert wu["assimilate_state"] == 2 and wu["file_delete_state"] == 2
    assert rpc.get_output(f"{name}_0") is not None  # still there for get_output.php
    other = RpcClient(remote_web.url, add_user(remote_project, 2))
    with pytest.raises(RemoteAuthError, match="bad authenticator"):
        other.get_output(f"{name}_0")  # another user's key reads nothing
    assert not list((remote_project.root / "results").glob("**/*__file_*"))  # get_output3's
    ex.shutdown()  # complete: retires the batch
    assert purge_retired_outputs(remote_project.root) == 1
    assert rpc.get_output(f"{name}_0") is None
    assert purge_retired_outputs(remote_project.root) == 0


def test_key_is_never_written_to_the_batch_dir_or_logs(
    remote_web: WebServer,
    admin_key: str,
    host: VolunteerHost,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="boinc_executor")
    batch = tmp_path / "b"
    with (
        host.running(),
        BoincExecutor(server=remote_web.url, authenticator=admin_key, batch_dir=batch) as ex,
    ):
        assert ex.submit(jobs.square, 2).result(timeout=60) == 4
        with pytest.raises(ValueError):
            ex.submit(jobs.raise_value_error, "boom").result(timeout=60)
    found = [p for p in batch.rglob("*") if p.is_file() and admin_key.encode() in p.read_bytes()]
    assert not found
    assert admin_key not in caplog.text


def test_unreachable_server_is_a_clear_error(admin_key: str, tmp_path: Path) -> None:
    rpc = RpcClient("http://127.0.0.1:9/nothing/", admin_key, attempts=2, backoff=0.01)
    with pytest.raises(RemoteUnavailableError, match="reachable") as info:
        rpc.ping()
    assert admin_key not in str(info.value)


def test_abort_and_retire_from_outside_the_executor(
    remote_project: Project, remote_web: WebServer, admin_key: str, tmp_path: Path
) -> None:
    ex = BoincExecutor(server=remote_web.url, authenticator=admin_key, batch_dir=tmp_path / "b")
    futures = [ex.submit(jobs.square, i) for i in range(2)]
    assert ex.flush(timeout=60)
    batch_id = ex.batch_id
    assert abort_remote_batch(batch_id, server=remote_web.url, authenticator=admin_key) == [
        batch_id
    ]
    for future in futures:
        with pytest.raises(WorkunitError, match="cancelled outside this executor"):
            future.result(timeout=60)
    ex.shutdown()
    assert retire_remote_batch(batch_id, server=remote_web.url, authenticator=admin_key) == []
    (row,) = remote_project.query("select state from batch where id=%s", batch_id)
    assert row["state"] == 4


def test_discard_a_remote_batch_aborts_its_jobs_and_removes_it(
    remote_project: Project, remote_web: WebServer, admin_key: str, tmp_path: Path
) -> None:
    """What a BatchMismatchError of a remote batch says to run: discard(ID, server=URL)."""
    batch_id = _submit_then_kill(remote_project, remote_web, admin_key, tmp_path / "b", 4)
    removed = BoincExecutor.discard(batch_id, server=remote_web.url, authenticator=admin_key)
    assert removed == tmp_path / "b" and not removed.exists()
    assert ("abort_jobs", "") in remote_web.calls and ("retire_batch", "") in remote_web.calls
    masks = [r["error_mask"] for r in remote_project.query("select error_mask from workunit")]
    assert masks == [16, 16, 16, 16]
