"""What the fuzz tests share: seed records, mutations, and the decoder's contract.

The fuzzer is hypothesis, not atheris: it is already a test dependency, runs inside
pytest on any interpreter without a libFuzzer build, is deterministic when
``derandomize`` is set (so CI never flakes), honours a time budget per test, and
shrinks a failure to a minimal input that we store in ``tests/corpus/`` and replay.
atheris' coverage guidance would find deeper paths, but the decoder's input space is
small and structured, and a nondeterministic fuzzer cannot run in a bounded CI test.
"""

from __future__ import annotations

import pickle
from collections import Counter, OrderedDict, deque
from decimal import Decimal
from pathlib import Path
from typing import Any

from boinc_executor import ProtocolError, protocol
from boinc_executor.errors import rebuild_exception
from boinc_executor.protocol.decoding import TypePolicy

CORPUS = Path(__file__).parent / "corpus"
JOB = "pyb_1_0"
POLICY = TypePolicy()


def _values() -> list[Any]:
    values: list[Any] = [
        1,
        -(2**70),
        1.5,
        "text with p and r",
        b"bytes",
        bytearray(b"ba"),
        [1, [2, [3]]],
        (1, "a"),
        {"k": 1, 2: [3]},
        {(1, 2), frozenset({3})},
        OrderedDict(a=1),
        deque([1, 2], maxlen=4),
        Counter("aab"),
        Decimal("1.25"),
        None,
        True,
    ]
    try:
        import numpy
    except ImportError:
        return values
    return [*values, numpy.arange(6).reshape(2, 3), numpy.array([1, None], dtype=object)]


def seed_records() -> list[bytes]:
    """Valid records of every shape the runner writes: values, failed calls, job errors."""
    failed = protocol.error_info(ValueError("bad", 3))
    seeds = [
        protocol.encode_result(JOB, [(True, value)], stdout="out", stderr="err")
        for value in _values()
    ]
    for proto in (2, 3, 4, 5):
        payload = pickle.dumps([(True, {"a": [1, 2.0, "x"]}), (False, failed)], protocol=proto)
        header = protocol.encode_result(JOB, [(True, 0), (True, 0)]).split(b"\n")[1]
        seeds.append(b"BOINC-EXECUTOR/result/1\n" + header + b"\n" + payload)
    info = protocol.failure_info(
        "WorkunitError", "gave up", error_mask=8, exit_status=1, stderr_tail="t"
    )
    seeds.append(protocol.encode_error_record(JOB, info, source="assimilator"))
    return seeds


def mutate(data: bytes, edits: list[tuple[int, float, int, int]]) -> bytes:
    """Apply edits ``(kind, where, length, byte)``: flip, insert, delete, duplicate, set."""
    buf = bytearray(data)
    for kind, where, length, byte in edits:
        at = int(where * len(buf)) if buf else 0
        if kind == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << (byte % 8)
        elif kind == 1:
            buf[at:at] = bytes([byte]) * length
        elif kind == 2:
            del buf[at : at + length]
        elif kind == 3:
            buf[at:at] = buf[at : at + length] * (byte % 4 + 1)
        else:
            buf[at : at + 1] = bytes([byte])
    return bytes(buf)


def check_decoder_contract(data: bytes, expect_calls: int) -> None:
    """The decoder's contract on any bytes: a record, or a ProtocolError; never anything else.

    Every error description a record yields (job-level or per call) must rebuild into
    an exception without raising, and printing it must work.
    """
    try:
        record = protocol.decode_result(data, POLICY, expect_job=JOB, expect_calls=expect_calls)
    except ProtocolError:
        return
    infos = [] if record.ok else [record.error]
    infos += [value for ok, value in record.outcomes if not ok]
    for info in infos:
        assert isinstance(info, dict)
        exc = rebuild_exception(info)
        assert isinstance(exc, BaseException)
        str(exc)
        repr(exc)
