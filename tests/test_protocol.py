"""The on-disk protocol and the safe decoder, file by file."""

from __future__ import annotations

import datetime
import decimal
import os
import pickle
import platform
from collections import OrderedDict
from pathlib import Path

import pytest

from boinc_executor import ProtocolError, UnsafeResultError, protocol, register_trusted_type
from boinc_executor.errors import JobLostError, RemoteError, WorkunitError, rebuild_exception
from boinc_executor.protocol.decoding import TypePolicy, safe_loads


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x


def test_names_round_trip() -> None:
    job = protocol.job_name("pyb", 42, 7)
    assert job == "pyb_42_7"
    assert protocol.parse_job_name(job) == ("pyb", 42, 7)
    assert protocol.parse_record_name(protocol.record_file_name(job, "local-1")) == (job, "local-1")
    for bad in (
        "pyb_42.result",
        "../pyb_1_1.x.result",
        "pyb_1_1..result",
        "pyb_1_1.a/b.result",
        "Pyb_1_1.x.result",
    ):
        assert protocol.parse_record_name(bad) is None
    with pytest.raises(ValueError):
        protocol.record_file_name(job, "../x")
    with pytest.raises(ValueError):
        protocol.check_prefix("1abc")


def test_frames_reject_other_kinds_and_versions() -> None:
    data = protocol.encode_frame("data", {"a": 1}, b"payload")
    assert protocol.decode_frame(data, "data") == ({"a": 1, "format": 1}, b"payload")
    with pytest.raises(ProtocolError, match="not a boinc-executor result"):
        protocol.decode_frame(data, "result")
    with pytest.raises(ProtocolError, match="format version"):
        protocol.decode_frame(data.replace(b"/1\n", b"/2\n", 1), "data")
    with pytest.raises(ProtocolError, match="truncated"):
        protocol.decode_frame(b"BOINC-EXECUTOR/data/1\n{", "data")


def test_a_record_with_nothing_printed_is_the_generic_encoding() -> None:
    """Invariant: the runner's fast path for a run that printed nothing writes the very
    bytes the generic header encoding does, so readers cannot tell the two apart."""
    from boinc_executor.protocol import classref

    for job, outcomes in (
        ("pyb_1_5", [(True, 1.5)]),
        ("pyb_22_7", [(True, "x"), (False, {"type": "ValueError", "message": "m"})]),
        ("pyb_3_0", []),
    ):
        header = {
            "job": job,
            "status": "ok",
            "calls": len(outcomes),
            "host": protocol.host_name(),
            "python": platform.python_version(),
            "stdout": "",
            "stderr": "",
            "error": None,
        }
        generic = protocol.encode_frame(
            protocol.KIND_RESULT, header, classref.dumps(list(outcomes))
        )
        assert protocol.encode_result(job, outcomes) == generic
    printed = protocol.encode_result("pyb_1_5", [(True, 1)], stdout="hi\n")
    assert protocol.decode_frame(printed, protocol.KIND_RESULT)[0]["stdout"] == "hi\n"


def test_read_bounded(tmp_path: Path) -> None:
    regular = tmp_path / "r"
    regular.write_bytes(b"12345")
    assert protocol.read_bounded(regular, 5) == b"12345"
    with pytest.raises(ProtocolError, match="limit"):
        protocol.read_bounded(regular, 4)
    link = tmp_path / "l"
    link.symlink_to(regular)
    with pytest.raises(ProtocolError, match="symbolic link"):
        protocol.read_bounded(link, 100)
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(ProtocolError, match="not a regular file"):
        protocol.read_bounded(fifo, 100)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "t"
    protocol.atomic_write(target, b"one")
    protocol.atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        1 + 2j,
        "s",
        b"b",
        bytearray(b"ba"),
        [1, [2]],
        (1,),
        {"k": {1, 2}},
        frozenset({3}),
        range(3),
        OrderedDict(a=1),
        datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        decimal.Decimal("1.5"),
        Path("/x"),
    ],
)
def test_safe_decoder_reads_plain_data(value: object) -> None:
    assert safe_loads(pickle.dumps(value, protocol=5), TypePolicy()) == value


def test_safe_decoder_reads_numpy() -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(6.0).reshape(2, 3)
    assert (safe_loads(pickle.dumps(arr, protocol=5), TypePolicy()) == arr).all()
    assert safe_loads(pickle.dumps(np.float64(2.5)), TypePolicy()) == 2.5


def test_safe_decoder_refuses_other_types_until_trusted() -> None:
    data = pickle.dumps(Point(3))
    with pytest.raises(UnsafeResultError, match="Point"):
        safe_loads(data, TypePolicy())
    assert safe_loads(data, TypePolicy([Point])) == Point(3)
    assert safe_loads(data, TypePolicy(trust_all=True)) == Point(3)
    assert safe_loads(data, TypePolicy([f"{__name__}.Point"])) == Point(3)


def test_register_trusted_type_is_process_wide() -> None:
    class Local:
        pass

    register_trusted_type(Local)
    assert TypePolicy().allows(Local.__module__, Local.__qualname__)
    with pytest.raises(ValueError):
        register_trusted_type("nodots")


def test_exception_rebuilding() -> None:
    err = rebuild_exception(
        {
            "type": "ZeroDivisionError",
            "module": "builtins",
            "args": ["x"],
            "traceback": "TB",
            "host": "h",
        }
    )
    assert isinstance(err, ZeroDivisionError) and "Worker on host h" in str(err.__cause__)
    assert isinstance(
        rebuild_exception({"type": "Evil", "module": "os", "message": "m"}), RemoteError
    )
    wu = rebuild_exception(
        {
            "type": "WorkunitError",
            "module": "boinc_executor",
            "message": "m",
            "error_mask": 8,
            "exit_status": 3,
        }
    )
    assert isinstance(wu, WorkunitError) and wu.error_mask == 8 and wu.exit_status == 3
    assert pickle.loads(pickle.dumps(wu)).error_mask == 8
    assert isinstance(
        rebuild_exception({"type": "JobLostError", "module": "boinc_executor", "message": "m"}),
        JobLostError,
    )
    # A built-in whose constructor does not fit the recorded args still comes back.
    odd = rebuild_exception(
        {"type": "UnicodeDecodeError", "module": "builtins", "args": ["?"], "message": "m"}
    )
    assert isinstance(odd, (UnicodeDecodeError, RemoteError))


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path: Path) -> None:
    """Records written by the BOINC daemon user must stay readable by the submitting user."""
    old = os.umask(0o022)
    try:
        protocol.atomic_write(tmp_path / "plain", b"x")
        protocol.atomic_write(tmp_path / "explicit", b"y", mode=0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "explicit").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "explicit").read_bytes() == b"y"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
