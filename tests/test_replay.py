"""Kill the master mid-batch and run it again: nothing finished runs twice, results come back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from boinc_executor import protocol
from boinc_executor.protocol.pack import handled_records

SCRIPT = """
import json, sys
from boinc_executor import BoincExecutor
from boinc_executor.protocol.pack import handled_records
from tests import jobs

log, batch_dir, out = sys.argv[1:4]
if __name__ == "__main__":
    with BoincExecutor(max_workers=2, batch_dir=batch_dir) as ex:
        results = list(ex.map(jobs.log_and_square, [log] * 40, range(40), [0.05] * 40))
    with open(out, "w") as fh:
        json.dump(results, fh)
"""


def _finished_jobs(batch_dir: Path) -> set[str]:
    names = set(handled_records(batch_dir))
    for path in (batch_dir / protocol.NEW).iterdir():
        parsed = protocol.parse_record_name(path.name)
        if parsed:
            names.add(parsed[0])
    return names


def test_sigkill_mid_batch_then_rerun(tmp_path: Path) -> None:
    script = tmp_path / "master.py"
    script.write_text(SCRIPT)
    log, batch_dir, out = tmp_path / "log", tmp_path / "batch", tmp_path / "out.json"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))
    argv = [sys.executable, str(script), str(log), str(batch_dir), str(out)]

    first = subprocess.Popen(argv, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().split()) >= 10:
            break
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the master and its workers, as a crash or ^C^C would
    first.wait()
    assert not out.exists()
    finished_before = _finished_jobs(batch_dir)
    assert finished_before, "the kill came before any job finished"
    journal = [json.loads(line) for line in (batch_dir / protocol.JOURNAL).read_text().splitlines()]
    batch_id = journal[0]["job"].split("_")[1]

    second = subprocess.run(argv, env=env, timeout=120, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert json.loads(out.read_text()) == [x * x for x in range(40)]

    runs = Counter(int(x) for x in log.read_text().split())
    assert set(runs) == set(range(40))
    for job in finished_before:
        index = int(job.rsplit("_", 1)[1])
        assert runs[index] == 1, (
            f"job {job} had finished before the kill but ran {runs[index]} times"
        )
    # The re-run created no new job: the journal still names only this batch's 40 jobs.
    journal = [json.loads(line) for line in (batch_dir / protocol.JOURNAL).read_text().splitlines()]
    assert sorted(entry["i"] for entry in journal) == list(range(40))
    assert {entry["job"].split("_")[1] for entry in journal} == {batch_id}
