"""The original PyBOINC API on top of BoincExecutor: the design's example, ^C, failures, safety.

The example runs as the design says (``python app_master.py`` in its directory) in a
copy under ``tmp_path``. Only the test copy's slave gets a preamble that logs every
execution (so "no job ran twice" is counted, not assumed) and holds jobs >= 10 while a
file exists (so the master is interrupted with jobs running, queued and not started).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from boinc_executor import (
    JobFailedError,
    protocol,
    pyboinc_call,
    pyboinc_get_input,
    pyboinc_master,
    pyboinc_return_output,
)
from boinc_executor.protocol.decoding import TypePolicy
from boinc_executor.protocol.pack import handled_records

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pyboinc_squares"
ANSWER = "The answer is 328350"

# Prepended to the test copy's slave only; the shipped example stays the design's shape.
COUNTING_PREAMBLE = """\
import os as _os, time as _time
from boinc_executor import pyboinc_get_input as _get
with open(_os.environ["PYBOINC_TEST_LOG"], "a") as _log:
    _log.write(f"{_get().value}\\n")
_until = _time.time() + 60
while _get().value >= 10 and _os.path.exists(_os.environ["PYBOINC_TEST_HOLD"]):
    if _time.time() > _until:
        break
    _time.sleep(0.02)
"""


def _example_copy(tmp_path: Path, counting: bool = True) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "squares"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("__pycache__", ".gitignore"))
    env = dict(os.environ)
    if counting:
        slave = work / "app_slave.py"
        slave.write_text(COUNTING_PREAMBLE + slave.read_text())
        env["PYBOINC_TEST_LOG"] = str(tmp_path / "executions.log")
        env["PYBOINC_TEST_HOLD"] = str(tmp_path / "hold")
    return work, env


def _run_master(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app_master.py"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )


def _wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _records(work: Path) -> int:
    new = len(os.listdir(work / protocol.NEW)) if (work / protocol.NEW).is_dir() else 0
    return new + len(handled_records(work))


def _journal_jobs(work: Path) -> list[str]:
    return [json.loads(line)["job"] for line in (work / protocol.JOURNAL).read_text().splitlines()]


def _executions(tmp_path: Path) -> collections.Counter[int]:
    return collections.Counter(int(v) for v in (tmp_path / "executions.log").read_text().split())


def test_example_interrupted_with_sigint_then_rerun(tmp_path: Path) -> None:
    work, env = _example_copy(tmp_path)
    (tmp_path / "hold").touch()
    out, err = (tmp_path / "run1.out").open("w"), (tmp_path / "run1.err").open("w")
    with out, err:
        master = subprocess.Popen(
            [sys.executable, "app_master.py"], cwd=work, env=env, stdout=out, stderr=err
        )
        try:
            _wait_for(  # jobs 0-9 are done, and held jobs >= 10 are running
                "held jobs and every call journaled",
                lambda: (
                    (tmp_path / "executions.log").is_file()
                    and sum(_executions(tmp_path).values()) >= 11
                    and _records(work) >= 10
                    and (work / "pyboinc_calls").is_file()
                ),
            )
            master.send_signal(signal.SIGINT)
            _wait_for(
                "the master to handle ^C",
                lambda: "pyboinc: stopping" in (tmp_path / "run1.err").read_text(),
            )
            (tmp_path / "hold").unlink()  # let the running jobs finish
            assert master.wait(timeout=60) != 0
        finally:
            if master.poll() is None:
                master.kill()
                master.wait()
    assert "The answer" not in (tmp_path / "run1.out").read_text()
    assert "KeyboardInterrupt" in (tmp_path / "run1.err").read_text()
    first_run = _executions(tmp_path)
    assert 11 <= sum(first_run.values()) < 100

    again = _run_master(work, env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ANSWER
    jobs = _journal_jobs(work)
    assert len(jobs) == len(set(jobs)) == 100  # no job created twice
    assert _executions(tmp_path) == collections.Counter(range(100))  # none ran twice

    # The design: a re-run hands every result again, from old/ (the pack) moved back to new/.
    third = _run_master(work, env)
    assert third.stdout.strip() == ANSWER
    assert _executions(tmp_path) == collections.Counter(range(100))
    assert len(_journal_jobs(work)) == 100


def test_rerun_without_calls_marker_replays_make_calls(tmp_path: Path) -> None:
    """A first run stopped before every call was journaled: make_calls() runs again, matched."""
    work, env = _example_copy(tmp_path)
    first = _run_master(work, env)
    assert first.stdout.strip() == ANSWER, first.stderr
    (work / "pyboinc_calls").unlink()
    last = max(handled_records(work).values(), key=lambda r: r.offset)
    os.truncate(work / protocol.HANDLED_PACK, last.offset)  # one job without a record
    again = _run_master(work, env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ANSWER
    assert len(_journal_jobs(work)) == 100
    assert (work / "pyboinc_calls").is_file()
    assert sum(_executions(tmp_path).values()) == 101  # only the job without a record ran again


def test_slave_runs_from_the_volunteers_runner_zip(tmp_path: Path) -> None:
    """What a volunteer has: pyboinc.zip (runner, protocol modules, cloudpickle), no more."""
    from boinc_executor.server.appversion import ZIP_LOGICAL_NAME
    from boinc_executor.server.runnerzip import build_runner_zip

    work, env = _example_copy(tmp_path, counting=False)
    assert _run_master(work, env).stdout.strip() == ANSWER
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / ZIP_LOGICAL_NAME).write_bytes(build_runner_zip("0.1.0"))
    download = work / "local" / "download"
    (program,) = download.glob("pyb_fn_*.pkl")
    shutil.copy(program, slot / protocol.OPEN_PROGRAM)
    batch_id = json.loads((work / protocol.CHECKPOINT).read_text())["batch_id"]
    job = protocol.job_name("pyb", batch_id, 7)
    (line,) = [
        json.loads(text)
        for text in (work / protocol.JOURNAL).read_text().splitlines()
        if json.loads(text)["job"] == job
    ]
    with open(work / "local" / line["data"], "rb") as pack:  # the input pack
        pack.seek(line["data_offset"])
        (slot / protocol.OPEN_DATA).write_bytes(pack.read(line["data_size"]))
    env.pop("BOINC_EXECUTOR_SYS_PATH", None)
    env.pop("PYTHONPATH", None)
    # -S: no site-packages, so not the installed boinc_executor either, as on a volunteer.
    run = subprocess.run(
        [sys.executable, "-S", ZIP_LOGICAL_NAME],
        cwd=slot,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    sys.path.insert(0, str(work))
    try:
        import app_types

        policy = TypePolicy([app_types.Output])
        data = (slot / protocol.OPEN_RESULT).read_bytes()
        record = protocol.decode_result(data, policy, expect_job=job, expect_calls=1)
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("app_types", None)
    assert record.ok, record.error
    assert type(record.outcomes[0][1]).__name__ == "Output"
    assert record.outcomes[0][1].value == 49


# --------------------------------------------------------------------------- in-process


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """A master directory: write files into it, make it the cwd and importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(**files: str) -> Path:
        for name, text in files.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
            written.append(name)
        return tmp_path

    yield write  # type: ignore[misc]
    for name in written:
        sys.modules.pop(name, None)


def _master(n: int, slave: str, make_input: Callable[[int], Any] = lambda i: i) -> list[Any]:
    outputs: list[Any] = []

    def make_calls() -> None:
        for i in range(n):
            pyboinc_call(slave, make_input(i))

    pyboinc_master(make_calls, outputs.append)
    return outputs


def test_output_naming_a_dangerous_callable_is_refused(project: Callable[..., Path]) -> None:
    directory = project(
        hostile_types="""
            import os

            class Fine:
                def __init__(self, value):
                    self.value = value

            class Evil:
                def __init__(self, path):
                    self.path = path

                def __reduce__(self):
                    return (os.system, (f"touch {self.path}",))
        """,
        hostile_slave="""
            import hostile_types
            from boinc_executor import pyboinc_get_input, pyboinc_return_output

            n, pwned = pyboinc_get_input()
            if n == 1:
                pyboinc_return_output(hostile_types.Evil(pwned))
            else:
                pyboinc_return_output(hostile_types.Fine(n))
        """,
    )
    import hostile_types

    pwned = directory / "pwned"
    outputs: list[Any] = []
    with pytest.raises(JobFailedError, match=r"1 of 3 PyBOINC calls failed: call 1") as info:
        outputs += _master(3, "hostile_slave.py", lambda i: (i, str(pwned)))
    assert "posix.system" in str(info.value) or "os.system" in str(info.value)
    assert not pwned.exists()
    assert isinstance(info.value.__cause__, Exception)
    assert all(isinstance(o, hostile_types.Fine) for o in outputs)


def test_failing_slaves_are_reported_after_the_others_are_handled(
    project: Callable[..., Path],
) -> None:
    project(
        fail_slave="""
            from boinc_executor import pyboinc_get_input, pyboinc_return_output

            class Local:
                pass

            n = pyboinc_get_input()
            if n == 3:
                raise ValueError(f"cannot handle {n}")
            if n == 4:
                pyboinc_return_output(Local())
            elif n != 5:
                pyboinc_return_output(n * 10)
        """
    )
    handled: list[Any] = []

    def make_calls() -> None:
        for i in range(6):
            pyboinc_call("fail_slave.py", i)

    with pytest.raises(JobFailedError) as info:
        pyboinc_master(make_calls, handled.append)
    message = str(info.value)
    assert "3 of 6 PyBOINC calls failed" in message
    assert "call 3 (job pyb_" in message and "ValueError: cannot handle 3" in message
    assert "define its classes in a module next to the slave" in message
    assert "finished without calling pyboinc_return_output" in message
    # The first failure to arrive is the cause; remote built-in exceptions keep their type.
    assert isinstance(info.value.__cause__, (ValueError, TypeError, RuntimeError))
    assert sorted(handled) == [0, 10, 20]


def test_design_slave_with_bare_names_and_shipped_modules(project: Callable[..., Path]) -> None:
    project(
        bare_helpers="""
            def double(x):
                return 2 * x
        """,
        bare_types="""
            import bare_helpers

            class Box:
                class Inner:
                    def __init__(self, value):
                        self.value = bare_helpers.double(value)
        """,
        bare_slave="""
            import bare_helpers
            import bare_types

            output = bare_types.Box.Inner(pyboinc_get_input())  # noqa: F821 - injected
            output.where = bare_helpers.__file__
            pyboinc_return_output(output)  # noqa: F821 - injected
            raise SystemExit(0)  # a script may end like this
        """,
    )
    import bare_types

    outputs = _master(4, "bare_slave.py")
    assert sorted(o.value for o in outputs) == [0, 2, 4, 6]
    assert all(isinstance(o, bare_types.Box.Inner) for o in outputs)
    assert all(Path(o.where).parent.name.startswith("pyboinc-") for o in outputs)  # shipped copy


def test_slave_api_outside_a_job_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"only works inside a slave program"):
        pyboinc_get_input()
    with pytest.raises(RuntimeError, match=r"only works inside a slave program"):
        pyboinc_return_output(1)
    with pytest.raises(RuntimeError, match=r"call it from the make_calls function"):
        pyboinc_call("app_slave.py", 1)


def test_missing_slave_file_is_a_clear_error(project: Callable[..., Path]) -> None:
    from boinc_executor import ConfigError

    project()
    with pytest.raises(ConfigError, match=r"'nope.py' is not a file"):
        _master(1, "nope.py")
    assert not Path("pyboinc_checkpoint").exists()  # nothing was created


# --------------------------------------------------------------------------- on a BOINC project


@pytest.mark.boinc
@pytest.mark.timeout(400)  # 100 work units through the stand-in take ~1 min; more when loaded
def test_example_on_a_boinc_project_interrupted_then_rerun(
    tmp_path: Path, pyboinc_project: Any, pyboinc_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run with PYBOINC_DIR: the volunteer keeps working while no master runs."""
    work, env = _example_copy(tmp_path)
    for name in ("PYBOINC_TEST_LOG", "PYBOINC_TEST_HOLD"):
        monkeypatch.setenv(name, env[name])  # the volunteer's client inherits them
    env["PYBOINC_DIR"] = str(pyboinc_project.root)
    env["BOINC_EXECUTOR_POLL_INTERVAL"] = "0.1"
    (tmp_path / "hold").touch()
    with pyboinc_host.running():
        with (tmp_path / "run1.err").open("w") as err:
            master = subprocess.Popen(
                [sys.executable, "app_master.py"],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                _wait_for(
                    "held jobs and every call journaled",
                    lambda: (
                        (tmp_path / "executions.log").is_file()
                        and sum(_executions(tmp_path).values()) >= 11
                        and (work / "pyboinc_calls").is_file()
                    ),
                    timeout=90,
                )
                master.send_signal(signal.SIGINT)
                assert master.wait(timeout=60) != 0
            finally:
                if master.poll() is None:
                    master.kill()
                    master.wait()
        assert "the jobs keep running on the BOINC project" in (tmp_path / "run1.err").read_text()
        (tmp_path / "hold").unlink()  # the held jobs finish while no master runs
        _wait_for("records of the held jobs", lambda: _records(work) >= 12, timeout=90)
        again = _run_master(work, env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ANSWER
    jobs = _journal_jobs(work)
    assert len(jobs) == len(set(jobs)) == 100
    assert _executions(tmp_path) == collections.Counter(range(100))
