"""^C and SIGTERM keep the script's batch; running the script again replays it.

Scripts run as ``python script.py`` with default arguments (no batch_dir) in a
process group of their own, and the interrupt goes to the group, as a terminal
sends it. A log line per executed call proves that nothing that finished before
the interrupt runs again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor

REPO_ROOT = Path(__file__).resolve().parents[1]
N = 40

SCRIPT = """
import json, logging, sys
from boinc_executor import BoincExecutor
from tests import jobs

log, out = sys.argv[1:3]
name = sys.argv[3] if len(sys.argv) > 3 else None
if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
    with BoincExecutor(max_workers=2, name=name) as ex:
        print("BATCH", ex.batch_id, ex.batch_dir, flush=True)
        results = list(ex.map(jobs.log_and_square, [log] * 40, range(40), [0.05] * 40))
    with open(out, "w") as fh:
        json.dump(results, fh)
"""

KEPT = re.compile(
    r"boinc-executor: batch (\d+) is kept in (\S+); "
    r"run the script again, or BoincExecutor\.resume\(\1\)"
)


def _env() -> dict[str, str]:
    # This checkout's src first: the scripts run its code even where another copy is installed.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]))


def _runs(log: Path) -> Counter[int]:
    return Counter(int(x) for x in log.read_text().split()) if log.exists() else Counter()


def _start(script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=_env(),
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _interrupt(
    script: Path, log: Path, out: Path, sig: signal.Signals, *, group: bool = True, name: str = ""
) -> tuple[int, Path]:
    """Run the script, interrupt it mid-map; return the kept batch's ID and directory."""
    proc = _start(script, str(log), str(out), *([name] if name else []))
    try:
        deadline = time.monotonic() + 60
        while sum(_runs(log).values()) < 8:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no call ran"
            time.sleep(0.02)
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not out.exists(), "the interrupt came after the map finished"
    match = KEPT.search(stderr)
    assert match, stderr
    batch_id, batch_dir = int(match.group(1)), Path(match.group(2))
    assert f"BATCH {batch_id} {batch_dir}" in stdout
    assert batch_dir.is_dir()
    # The log line says the same: whose batch it is, where, and how to reattach.
    opened = re.search(rf"LOG batch {batch_id} of (.+?) in (\S+) \(reattach with", stderr)
    assert opened, stderr
    owner = f"{script.resolve()}" + (f" (name={name!r})" if name else "")
    assert opened.groups() == (owner, str(batch_dir))
    return batch_id, batch_dir


def _run(script: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(script), *args],
        env=_env(),
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"BATCH (\d+) ", done.stdout)
    assert match, done.stdout
    return int(match.group(1)), done.stderr


LOOP_SCRIPT = """
import sys, time
from boinc_executor import BoincExecutor
from tests import jobs

log, how = sys.argv[1:3]
if __name__ == "__main__":
    with BoincExecutor(max_workers=2) as ex:
        print("BATCH", ex.batch_id, ex.batch_dir, flush=True)
        for n, _ in enumerate(ex.map(jobs.log_and_square, [log] * 40, range(40), [0.05] * 40)):
            if n == 8 and how in ("exit", "raise"):
                # Every call has finished: the batch is complete, its results unconsumed.
                while sum(1 for _ in open(log)) < 40:
                    time.sleep(0.02)
                time.sleep(0.5)
                if how == "exit":
                    sys.exit(3)
                raise ValueError("the script's own bug")
            if n == 8 and how == "break":
                break
    print("DONE", flush=True)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "master.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c-to-group", "sigterm-to-master"],
)
def test_interrupt_then_rerun_replays_and_runs_nothing_twice(
    script: Path, tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    log, out = tmp_path / "log", tmp_path / "out.json"
    batch_id, batch_dir = _interrupt(script, log, out, sig, group=group)
    before = _runs(log)
    assert 0 < sum(before.values()) < N
    assert all(n == 1 for n in before.values())

    again, stderr = _run(script, str(log), str(out))
    assert again == batch_id, "the re-run did not replay the script's batch"
    assert f"LOG replaying batch {batch_id} of {script.resolve()} in {batch_dir}:" in stderr
    assert json.loads(out.read_text()) == [x * x for x in range(N)]
    runs = _runs(log)
    assert set(runs) == set(range(N))
    assert all(n == 1 for n in runs.values()), {x: n for x, n in runs.items() if n > 1}
    # Completed and shut down normally: the batch is gone and the next run starts fresh.
    assert not batch_dir.exists()
    fresh, _ = _run(script, str(log), str(out))
    assert fresh != batch_id
    assert all(n == 2 for n in _runs(log).values())


def test_resume_after_ctrl_c_from_another_directory(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, out = tmp_path / "log", tmp_path / "out.json"
    batch_id, batch_dir = _interrupt(script, log, out, signal.SIGINT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with BoincExecutor.resume(batch_id, max_workers=2) as ex:
        assert ex.batch_dir == batch_dir
        assert list(ex.results(timeout=60)) == [x * x for x in range(N)]
    assert all(n == 1 for n in _runs(log).values())
    assert set(_runs(log)) == set(range(N))
    # Completed through resume: the script's next run starts a fresh batch.
    assert not batch_dir.exists()
    fresh, _ = _run(script, str(log), str(out))
    assert fresh != batch_id


def test_two_scripts_and_two_names_never_share(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    first, _ = _interrupt(script, tmp_path / "log1", out, signal.SIGINT, name="one")
    other_name, _ = _interrupt(script, tmp_path / "log2", out, signal.SIGINT, name="two")
    assert other_name != first
    twin = tmp_path / "twin.py"
    twin.write_text(SCRIPT)
    other_script, _ = _interrupt(twin, tmp_path / "log3", out, signal.SIGINT, name="one")
    assert other_script not in (first, other_name)
    replayed, _ = _run(script, str(tmp_path / "log1"), str(out), "one")
    assert replayed == first
    assert all(n == 1 for n in _runs(tmp_path / "log1").values())


def test_interactive_sessions_get_a_fresh_batch_unless_named(tmp_path: Path) -> None:
    code = (
        "import os, sys\nfrom boinc_executor import BoincExecutor\n"
        "ex = BoincExecutor(max_workers=1, name=sys.argv[1] or None)\n"
        "print(ex.batch_id, flush=True)\nos._exit(0)\n"
    )

    def batch(name: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", code, name],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return int(done.stdout)

    assert batch("") != batch("")
    named = batch("analysis")
    assert batch("analysis") == named
    assert batch("other") != named


@pytest.mark.parametrize(
    ("how", "status", "kept"),
    [
        ("exit", 3, KEPT),
        ("raise", 1, re.compile(r"batch (\d+) is kept in (\S+): the script ended with ValueError")),
    ],
    ids=["sys-exit", "exception"],
)
def test_leaving_a_map_loop_early_keeps_the_batch_and_break_cancels(
    tmp_path: Path, how: str, status: int, kept: re.Pattern[str]
) -> None:
    """``sys.exit()`` or an exception in the loop body closes the map iterator before
    ``__exit__`` sees why: the results the loop never used are kept (here every call had
    finished) and the next run replays them. ``break`` keeps ProcessPoolExecutor's cancel."""
    script = tmp_path / "loop.py"
    script.write_text(LOOP_SCRIPT)
    log = tmp_path / "log"
    done = subprocess.run(
        [sys.executable, str(script), str(log), how],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == status, done.stderr
    match = kept.search(done.stderr)
    assert match, done.stderr
    batch_id, batch_dir = int(match.group(1)), Path(match.group(2))
    assert f"BATCH {batch_id} {batch_dir}" in done.stdout and batch_dir.is_dir()
    assert _runs(log) == Counter(range(N))

    again, _ = _run(script, str(log), "run-through")
    assert again == batch_id, f"the re-run did not replay the batch {how} left"
    runs = _runs(log)
    assert set(runs) == set(range(N))
    assert all(n == 1 for n in runs.values()), {x: n for x, n in runs.items() if n > 1}
    assert not batch_dir.exists()

    log.unlink()
    broke, stderr = _run(script, str(log), "break")
    assert broke != batch_id and "is kept in" not in stderr
    assert sum(_runs(log).values()) < N, "break did not cancel the calls that had not started"
    assert not (batch_dir.parent / str(broke)).exists()


CRASH_SCRIPT = """
import sys
from concurrent.futures import wait
from boinc_executor import BoincExecutor
from tests import jobs

log, how = sys.argv[1:3]
if __name__ == "__main__":
    ex = BoincExecutor(max_workers=2)  # no with block: the exit hook ends it
    print("BATCH", ex.batch_id, ex.batch_dir, flush=True)
    futures = [ex.submit(jobs.log_and_square, log, x) for x in range(5)]
    wait(futures)
    if how == "crash":
        raise ValueError("the script's own bug, before it used a single result")
    print(sum(f.result() for f in futures))
"""


def test_a_script_dying_of_an_exception_keeps_its_completed_batch(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    log = tmp_path / "log"
    done = subprocess.run(
        [sys.executable, str(script), str(log), "crash"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1 and "ValueError" in done.stderr, done.stderr
    kept = r"batch (\d+) is kept in (\S+): the script ended with ValueError"
    match = re.search(kept, done.stderr)
    assert match, done.stderr
    batch_id, batch_dir = int(match.group(1)), Path(match.group(2))
    assert batch_dir.is_dir() and _runs(log) == Counter(range(5))
    again, _ = _run(script, str(log), "fixed")
    assert again == batch_id
    assert _runs(log) == Counter(range(5)), "the fixed script ran finished calls again"
    assert not batch_dir.exists()
