"""The volunteer runner, run as BOINC runs it: a subprocess with cwd = a slot directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from boinc_executor import protocol
from boinc_executor.protocol.decoding import TypePolicy
from tests import jobs

SRC = str(Path(__file__).parent.parent / "src")
ROOT = str(Path(__file__).parent.parent)


def _run(slot: Path, extra_path: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (extra_path, SRC, ROOT) if p))
    return subprocess.run(
        [sys.executable, "-m", "boinc_executor.volunteer.runner"],
        cwd=slot,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _decode(
    slot: Path, job: str, calls: int, output: str = protocol.OPEN_RESULT
) -> protocol.ResultRecord:
    return protocol.decode_result(
        (slot / output).read_bytes(), TypePolicy(), expect_job=job, expect_calls=calls
    )


def _slot(tmp_path: Path, fn, calls, job: str = "pyb_1_0") -> Path:
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / protocol.OPEN_PROGRAM).write_bytes(protocol.encode_program(fn))
    (slot / protocol.OPEN_DATA).write_bytes(protocol.encode_data(job, calls))
    return slot


def test_copy_file_mode(tmp_path: Path) -> None:
    slot = _slot(tmp_path, jobs.add, [((1,), {"b": 2}), ((5,), {})])
    result = _run(slot)
    assert result.returncode == 0, result.stderr
    assert (slot / protocol.FINISH_FILE).read_text() == "0\n"
    record = _decode(slot, "pyb_1_0", 2)
    assert record.ok and record.outcomes == [(True, 3), (True, 5)]


def test_soft_link_mode(tmp_path: Path) -> None:
    project = tmp_path / "projects" / "p"
    project.mkdir(parents=True)
    slot = tmp_path / "slots" / "0"
    slot.mkdir(parents=True)
    (project / "pyb_fn_x.pkl").write_bytes(protocol.encode_program(jobs.square))
    (project / "pyb_1_0.pkl").write_bytes(protocol.encode_data("pyb_1_0", [((7,), {})]))
    for open_name, physical in (
        (protocol.OPEN_PROGRAM, "pyb_fn_x.pkl"),
        (protocol.OPEN_DATA, "pyb_1_0.pkl"),
        (protocol.OPEN_RESULT, "pyb_1_0_0_r1_0"),
    ):
        (slot / open_name).write_text(f"<soft_link>../../projects/p/{physical}</soft_link>\n")
    result = _run(slot)
    assert result.returncode == 0, result.stderr
    assert "<soft_link>" in (slot / protocol.OPEN_RESULT).read_text(
        errors="replace"
    )  # the link survives
    record = protocol.decode_result(
        (project / "pyb_1_0_0_r1_0").read_bytes(),
        TypePolicy(),
        expect_job="pyb_1_0",
        expect_calls=1,
    )
    assert record.outcomes == [(True, 49)]


def test_failing_call_is_recorded_per_call(tmp_path: Path) -> None:
    slot = _slot(tmp_path, jobs.raise_value_error, [(("one",), {})])
    assert _run(slot).returncode == 0
    ((ok, info),) = _decode(slot, "pyb_1_0", 1).outcomes
    assert not ok and info["type"] == "ValueError" and info["args"] == ["one"]
    assert "raise_value_error" in info["traceback"]


@pytest.mark.parametrize(
    "open_name, content",
    [
        (protocol.OPEN_PROGRAM, b"BOINC-EXECUTOR/program/1\n{}\n\x80garbage"),
        (protocol.OPEN_DATA, b"not a data file"),  # names no job: init_data.xml does
    ],
    ids=["program", "data"],
)
def test_corrupt_input_leaves_an_error_record(
    tmp_path: Path, open_name: str, content: bytes
) -> None:
    slot = _slot(tmp_path, jobs.square, [((1,), {})], job="pyb_3_7")
    (slot / open_name).write_bytes(content)
    (slot / "init_data.xml").write_text("<app_init_data><wu_name>pyb_3_7</wu_name></app_init_data>")
    assert _run(slot).returncode == 0
    record = _decode(slot, "pyb_3_7", 1)
    assert not record.ok and record.error is not None
    assert record.error["type"] == "JobFailedError"
    assert "could not start" in record.error["message"]


def test_missing_input_is_labelled_from_init_data(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / "init_data.xml").write_text("<app_init_data><wu_name>pyb_4_2</wu_name></app_init_data>")
    assert _run(slot).returncode == 0
    record = _decode(slot, "pyb_4_2", 0)
    assert not record.ok and "missing" in record.error["message"]


def test_other_python_version_is_refused(tmp_path: Path) -> None:
    slot = _slot(tmp_path, jobs.square, [((1,), {})])
    data = (
        (slot / protocol.OPEN_PROGRAM)
        .read_bytes()
        .replace(f'"python":"{protocol.python_tag()}"'.encode(), b'"python":"2.7"')
    )
    (slot / protocol.OPEN_PROGRAM).write_bytes(data)
    assert _run(slot).returncode == 0
    record = _decode(slot, "pyb_1_0", 1)
    assert "Python 2.7" in record.error["message"]


def test_missing_cloudpickle_is_reported(tmp_path: Path) -> None:
    slot = _slot(tmp_path, jobs.square, [((1,), {})])
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "cloudpickle.py").write_text(
        "raise ImportError('not installed on this volunteer')\n"
    )
    assert _run(slot, extra_path=str(blocker)).returncode == 0
    record = _decode(slot, "pyb_1_0", 1)
    assert "cloudpickle is not importable" in record.error["message"]


def test_unwritable_output_exits_non_zero(tmp_path: Path) -> None:
    slot = _slot(tmp_path, jobs.square, [((1,), {})])
    # A directory in the output's place cannot be replaced by a file, even by root.
    (slot / protocol.OPEN_RESULT).mkdir()
    (slot / protocol.OPEN_RESULT / "occupied").touch()
    result = _run(slot)
    assert result.returncode == 1
    assert "cannot write the result" in result.stderr
    assert not (slot / protocol.FINISH_FILE).exists()


def _print_when_odd(x: int) -> int:
    if x % 2:
        print(f"odd {x}")
    return x


def test_per_call_output_stays_with_its_call_when_only_some_calls_print() -> None:
    from boinc_executor.volunteer.runner import execute

    program = protocol.encode_program(_print_when_odd)
    data = protocol.encode_data("pyb_1_0", [((x,), {}) for x in range(5)])
    record = protocol.decode_result(
        execute(program, data), TypePolicy(), expect_job="pyb_1_0", expect_calls=5
    )
    assert record.outcomes == [(True, x) for x in range(5)]
    assert [o.stdout for o in record.outputs] == ["", "odd 1\n", "", "odd 3\n", ""]
    quiet = protocol.encode_data("pyb_1_1", [((0,), {}), ((2,), {})])
    header, _ = protocol.decode_frame(execute(program, quiet), protocol.KIND_RESULT)
    assert "output" not in header  # no call printed: the record carries no output list
