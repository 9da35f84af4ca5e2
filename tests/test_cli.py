"""The ``boinc-executor`` command line on embedded-backend batches, run as a user runs it.

Every command runs as a real subprocess (``python -m boinc_executor``) against
batches made by real scripts; ``--json`` output is parsed back. The BOINC side is
in tests/test_cli_boinc.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Five calls: squares, one ValueError, one that prints; the batch is kept (explicit dir).
BATCH_SCRIPT = """\
import sys
from boinc_executor import BoincExecutor
from tests import jobs
ex = BoincExecutor(max_workers=2, batch_dir=sys.argv[1], name="five")
futures = [ex.submit(jobs.square, 1), ex.submit(jobs.square, 2),
           ex.submit(jobs.raise_value_error, "bad input"), ex.submit(jobs.print_and_return, 7),
           ex.submit(jobs.identity, {1, 2})]
ex.shutdown()
print(ex.batch_id)
"""

# One worker held busy on a file, so the other calls stay queued until released.
HELD_SCRIPT = """\
import sys
from boinc_executor import BoincExecutor
from tests import jobs
ex = BoincExecutor(max_workers=1, batch_dir=sys.argv[1], name="held")
first = ex.submit(jobs.wait_for_file, sys.argv[2], "first")
rest = [ex.submit(jobs.square, i) for i in range(4)]
ex.flush()
print(ex.batch_id, flush=True)
outcomes = []
for fut in [first, *rest]:
    try:
        outcomes.append(repr(fut.result(timeout=60)))
    except Exception as exc:
        outcomes.append(type(exc).__name__)
print(" ".join(outcomes), flush=True)
ex.shutdown()
"""

BLOCK_MYSQLDB = (
    "import sys; sys.modules['MySQLdb'] = None; "  # makes `import MySQLdb` raise ImportError
    "from boinc_executor.cli import main; sys.exit(main())"
)


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def cli(
    *args: str, block_mysqldb: bool = False, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    head = ["-c", BLOCK_MYSQLDB] if block_mysqldb else ["-m", "boinc_executor"]
    return subprocess.run(
        [sys.executable, *head, *args],
        capture_output=True,
        text=True,
        env=dict(env(), **(extra_env or {})),
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def cli_json(*args: str, code: int = 0, **kwargs: Any) -> Any:
    done = cli(*args, "--json", **kwargs)
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout)


def run_batch(tmp_path: Path, name: str = "b") -> tuple[int, Path]:
    script = tmp_path / "five.py"
    script.write_text(BATCH_SCRIPT)
    path = tmp_path / name
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]), path


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


@pytest.fixture
def batch(tmp_path: Path) -> tuple[int, Path]:
    return run_batch(tmp_path)


def test_help_runs_both_ways() -> None:
    for argv in (["-m", "boinc_executor", "--help"], ["-m", "boinc_executor.cli", "--help"]):
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env())
        assert done.returncode == 0, done.stderr
        for command in (
            "list",
            "status",
            "wait",
            "results",
            "errors",
            "output",
            "cancel",
            "retire",
            "remove",
            "clean",
            "setup-project",
        ):
            assert command in done.stdout


def test_json_is_taken_by_every_command_docs_cli_md_says() -> None:
    """docs/cli.md: every command takes --json except the three it names."""
    import argparse

    from boinc_executor.cli import parser

    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    without = {name for name, p in sub.choices.items()
               if not any("--json" in a.option_strings for a in p._actions)}
    assert without == {"grant-submit", "purge-remote-outputs", "restart-daemons"}
    text = (REPO_ROOT / "docs" / "cli.md").read_text()
    assert "Every command except `grant-submit`, `purge-remote-outputs` and " \
           "`restart-daemons` takes `--json`." in " ".join(text.split())


def test_list_and_status_of_a_finished_batch(batch: tuple[int, Path]) -> None:
    batch_id, path = batch
    rows = cli_json("list")
    (row,) = rows
    assert (row["id"], row["backend"], row["name"]) == (batch_id, "local", "five")
    assert row["directory"] == str(path.resolve())
    assert row["counts"] == {
        "total": 5,
        "queued": 0,
        "running": 0,
        "done": 4,
        "failed": 1,
        "cancelled": 0,
    }
    assert row["created"] > 0
    text = cli("list").stdout
    assert "five" in text and str(path.resolve()) in text and "4/5 done, 1 failed" in text
    status = cli_json("status", str(batch_id))
    assert status["counts"]["failed"] == 1 and status["open_by"] is None
    assert "5 total, 0 queued, 0 running, 4 done, 1 failed" in cli("status", str(batch_id)).stdout


def test_wait_results_errors_and_output(batch: tuple[int, Path]) -> None:
    batch_id, _ = batch
    waited = cli("wait", str(batch_id))
    assert waited.returncode == 1  # a call failed
    assert json.loads(cli("wait", str(batch_id), "--json").stdout)["outcome"] == "failed"
    lines = [json.loads(line) for line in cli("results", str(batch_id)).stdout.splitlines()]
    assert lines[0] == {"call": 0, "status": "done", "value": 1}
    assert lines[1] == {"call": 1, "status": "done", "value": 4}
    assert lines[2]["status"] == "failed"
    assert lines[2]["error"] == {"type": "ValueError", "message": "bad input"}
    assert lines[3]["value"] == 7
    assert lines[4] == {"call": 4, "status": "done", "value": [1, 2], "type": "set"}
    (error,) = cli_json("errors", str(batch_id), "--traceback")
    assert (error["call"], error["type"], error["message"]) == (2, "ValueError", "bad input")
    assert error["host"] and "raise ValueError(message)" in error["traceback"]
    text = cli("errors", str(batch_id)).stdout
    assert "call 2" in text and "ValueError: bad input" in text and "Traceback" not in text
    output = cli_json("output", str(batch_id), "3")
    assert output["stdout"] == "hello from 7\n" and output["job"].endswith("_3")
    assert "hello from 7" in cli("output", str(batch_id), "3").stdout
    assert cli("output", str(batch_id), "99").returncode == 1


def test_unknown_id_and_deleted_directory(batch: tuple[int, Path]) -> None:
    batch_id, path = batch
    for command in ("status", "wait", "results", "errors", "cancel", "retire"):
        done = cli(command, "999")
        assert done.returncode == 3, (command, done.stderr)
        assert "no local batch 999" in done.stderr
    import shutil

    shutil.rmtree(path)
    for argv in (
        ["status", str(batch_id)],
        ["results", str(batch_id)],
        ["output", str(batch_id), "0"],
    ):
        done = cli(*argv)
        assert done.returncode == 3 and "no longer holds it" in done.stderr, done.stderr
    assert cli_json("list")[0]["counts"] is None
    assert cli("clean").returncode == 1  # changes things: no terminal, no --yes
    assert cli_json("clean", "--yes") == {"pruned": [batch_id], "removed": []}
    assert cli_json("list") == []


def test_clean_older_than_removes_complete_batches_only(tmp_path: Path) -> None:
    finished, finished_dir = run_batch(tmp_path, "finished")
    recent, _ = run_batch(tmp_path, "recent")
    checkpoint = finished_dir / "pyboinc_checkpoint"
    data = json.loads(checkpoint.read_text())
    data["created"] -= 3 * 86400
    checkpoint.write_text(json.dumps(data))
    assert cli("clean", "--older-than", "soon").returncode == 2
    assert cli_json("clean", "--older-than", "2d", "--yes") == {"pruned": [], "removed": [finished]}
    assert not finished_dir.exists()
    assert [row["id"] for row in cli_json("list")] == [recent]


def start_held(tmp_path: Path) -> tuple[subprocess.Popen[str], int, Path, Path]:
    script = tmp_path / "held.py"
    script.write_text(HELD_SCRIPT)
    gate = tmp_path / "gate"
    path = tmp_path / "held"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(gate)],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
        start_new_session=True,
    )
    assert proc.stdout is not None
    batch_id = int(proc.stdout.readline())
    wait_for(lambda: cli_json("status", str(batch_id))["counts"]["running"] == 1)
    return proc, batch_id, path, gate


def test_wait_timeout_then_done_and_retire_refused_while_open(tmp_path: Path) -> None:
    proc, batch_id, path, gate = start_held(tmp_path)
    try:
        status = cli_json("status", str(batch_id))
        assert status["counts"] == {
            "total": 5,
            "queued": 4,
            "running": 1,
            "done": 0,
            "failed": 0,
            "cancelled": 0,
        }
        assert status["open_by"].startswith(f"pid {proc.pid} ")
        timed_out = cli("wait", str(batch_id), "--timeout", "0.3", "--interval", "0.1")
        assert timed_out.returncode == 2 and "timed out" in timed_out.stdout
        refused = cli("retire", str(batch_id), "--yes")
        assert refused.returncode == 1 and "is open by pid" in refused.stderr
        assert path.exists()
        gate.write_text("go")
        done = cli("wait", str(batch_id), "--timeout", "60", "--interval", "0.1", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["done"] == 5
    finally:
        gate.write_text("go")
        out, _ = proc.communicate(timeout=60)
    assert out.split() == ["'first'", "0", "1", "4", "9"]
    assert cli("remove", str(batch_id)).returncode == 1  # not confirmed: kept
    assert path.exists()
    removed = cli_json("remove", str(batch_id), "--yes")
    assert removed["removed"] == str(path.resolve())
    assert not path.exists()
    assert cli_json("list") == []


def test_cancel_a_running_local_batch(tmp_path: Path) -> None:
    proc, batch_id, _, gate = start_held(tmp_path)
    try:
        assert cli("cancel", str(batch_id)).returncode == 1  # no terminal, no --yes
        assert cli_json("status", str(batch_id))["counts"]["cancelled"] == 0
        assert cli_json("cancel", str(batch_id), "--yes") == {"batch": batch_id, "cancelled": 4}
        counts = cli_json("status", str(batch_id))["counts"]
        assert (counts["cancelled"], counts["running"]) == (4, 1)
    finally:
        gate.write_text("go")
        out, _ = proc.communicate(timeout=60)
    assert out.split() == ["'first'"] + ["WorkunitError"] * 4
    assert cli("wait", str(batch_id)).returncode == 1  # cancelled calls are not done
    lines = [json.loads(line) for line in cli("results", str(batch_id)).stdout.splitlines()]
    assert [line["status"] for line in lines] == ["done"] + ["cancelled"] * 4


def test_status_watch_shows_a_bar_and_ctrl_c_leaves_the_batch(tmp_path: Path) -> None:
    proc, batch_id, _, gate = start_held(tmp_path)
    try:
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "boinc_executor",
                "status",
                str(batch_id),
                "--watch",
                "--interval",
                "0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            start_new_session=True,
        )
        time.sleep(1.5)
        os.killpg(watcher.pid, signal.SIGINT)  # as a terminal's ^C reaches the group
        out, err = watcher.communicate(timeout=30)
        assert watcher.returncode == 130
        assert "[" in out and "0/5" in out and "ETA ?" in out
        assert f"batch {batch_id} is left as it is" in err
        assert proc.poll() is None  # the script runs on
        gate.write_text("go")
        done = cli("status", str(batch_id), "--watch", "--interval", "0.1")
        assert done.returncode == 0 and "5/5" in done.stdout and "ETA 0s" in done.stdout
    finally:
        gate.write_text("go")
        proc.communicate(timeout=60)


def test_without_mysqlclient_local_batches_work_and_boinc_says_what_to_install(
    batch: tuple[int, Path], tmp_path: Path
) -> None:
    batch_id, _ = batch
    done = cli("status", str(batch_id), "--json", block_mysqldb=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["done"] == 4
    assert cli("results", str(batch_id), block_mysqldb=True).returncode == 0
    project = tmp_path / "project"
    project.mkdir()
    for argv in (["status", "1", "--project", str(project)], ["list", "--project", str(project)]):
        done = cli(*argv, block_mysqldb=True)
        assert done.returncode == 4, done.stderr
        assert "needs mysqlclient" in done.stderr and "pip install mysqlclient" in done.stderr
        assert "Traceback" not in done.stderr
    listed = cli("list", "--json", "--project", str(project), block_mysqldb=True)
    assert [row["id"] for row in json.loads(listed.stdout)] == [batch_id]  # local ones still


def test_progress_bar_helpers(tmp_path: Path) -> None:
    script = tmp_path / "bar.py"
    script.write_text(
        "import sys\n"
        "if sys.argv[1] == 'plain': sys.modules['tqdm'] = None\n"
        "from boinc_executor import BoincExecutor\n"
        "from boinc_executor.progress import show_progress, watch_progress\n"
        "from tests import jobs\n"
        "with BoincExecutor(max_workers=2) as ex:\n"
        "    xs = range(6)\n"
        "    assert list(show_progress(ex.map(jobs.square, xs), total=len(xs))) == "
        "[x * x for x in xs]\n"
        "    futures = [ex.submit(jobs.square, x) for x in xs]\n"
        "    final = watch_progress(ex, interval=0.05)\n"
        "    print(final.done, final.total)\n"
    )
    for mode in ("plain", "tqdm"):
        done = subprocess.run(
            [sys.executable, str(script), mode],
            capture_output=True,
            text=True,
            env=env(),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["12", "12"]
        assert "6/6" in done.stderr and "12/12" in done.stderr


def test_cancel_a_killed_batch_then_resume_runs_nothing(tmp_path: Path) -> None:
    proc, batch_id, _, gate = start_held(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # the master and its worker, as a crash would
    proc.communicate(timeout=60)
    wait_for(lambda: cli_json("status", str(batch_id))["open_by"] is None)
    assert cli_json("cancel", str(batch_id), "--yes") == {"batch": batch_id, "cancelled": 5}
    gate.write_text("go")
    from boinc_executor import BoincExecutor
    from boinc_executor.errors import WorkunitError

    with BoincExecutor.resume(batch_id, max_workers=1) as ex:
        for fut in ex.futures:
            assert isinstance(fut.exception(timeout=60), WorkunitError)
    counts = cli_json("status", str(batch_id))["counts"]
    assert (counts["cancelled"], counts["done"]) == (5, 0)  # nothing ran again


def test_a_record_file_is_counted_only_for_the_job_it_holds(tmp_path: Path) -> None:
    """Invariant (status, results, errors): a file in new/ named for one job but holding
    another's record (a local worker's reused file in the instant before its rename,
    or a planted one) is no result of the job its name says."""
    from boinc_executor import BoincExecutor, protocol
    from boinc_executor.batchview import BatchView
    from boinc_executor.protocol.pack import RecordPack
    from tests import jobs

    batch = tmp_path / "b"
    with BoincExecutor(max_workers=1, batch_dir=batch) as ex:
        assert ex.submit(jobs.square, 3).result(timeout=60) == 9
    (job,) = BatchView(batch).records()
    pack = RecordPack(str(batch / protocol.HANDLED_PACK), writable=False)
    try:
        _, body = pack.read(job)
    finally:
        pack.close()
    prefix, batch_id, _ = protocol.parse_job_name(job) or ("", 0, 0)
    other = protocol.job_name(prefix, batch_id, 7)
    (batch / protocol.NEW / protocol.record_file_name(other, "local-x-0")).write_bytes(body)
    assert set(BatchView(batch).records()) == {job}
