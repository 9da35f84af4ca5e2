"""Records crafted the way a hostile volunteer would write them: raw bytes, no pickler.

Nothing here builds the hostile structure in the test process (a dict of colliding keys
would freeze the test itself); every payload is written opcode by opcode.
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any

from boinc_executor import protocol

HASH_MODULUS = sys.hash_info.modulus


def header_bytes(job: str, **fields: Any) -> bytes:
    """A result record's header line as the runner writes it, with ``fields`` overriding."""
    header = {
        "job": job,
        "status": "ok",
        "calls": 1,
        "host": "evil",
        "python": "3",
        "stdout": "",
        "stderr": "",
        "error": None,
        "format": protocol.FORMAT_VERSION,
    }
    header.update(fields)
    return json.dumps(header, separators=(",", ":")).encode()


def frame(header_line: bytes, payload: bytes = b"") -> bytes:
    """Magic line, header line, payload: exactly what sits in a record file."""
    return b"BOINC-EXECUTOR/result/%d\n%s\n%s" % (protocol.FORMAT_VERSION, header_line, payload)


def ok_record(job: str, payload: bytes) -> bytes:
    """A result record carrying ``payload`` for one call."""
    return frame(header_bytes(job), payload)


def deep_json(depth: int) -> bytes:
    """A JSON array nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth


def deep_list_opcodes(depth: int) -> bytes:
    """Pickle opcodes that leave one list nested ``depth`` deep on the stack."""
    return pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1)


def _short(text: str) -> bytes:
    raw = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw


def failed_call_payload(fields: dict[str, str], deep_field: str, depth: int) -> bytes:
    """``[(False, {...fields, deep_field: [[[...]]]})]``: a per-call error with one deep field."""
    out = [pickle.PROTO + b"\x04", pickle.EMPTY_LIST, pickle.NEWFALSE, pickle.EMPTY_DICT]
    for key, value in fields.items():
        out += [_short(key), _short(value), pickle.SETITEM]
    out += [_short(deep_field), deep_list_opcodes(depth), pickle.SETITEM]
    out += [pickle.TUPLE2, pickle.APPEND, pickle.STOP]
    return b"".join(out)


def _long1(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def colliding_dict_payload(n: int, batch: int = 1000) -> bytes:
    """``[(True, {k: None})]`` with ``n`` int keys that all hash to 0."""
    out = [pickle.PROTO + b"\x04", pickle.EMPTY_LIST, pickle.NEWTRUE, pickle.EMPTY_DICT]
    for start in range(1, n + 1, batch):
        out.append(pickle.MARK)
        for i in range(start, min(n + 1, start + batch)):
            out += [_long1(HASH_MODULUS * i), pickle.NONE]
        out.append(pickle.SETITEMS)
    out += [pickle.TUPLE2, pickle.APPEND, pickle.STOP]
    return b"".join(out)


def huge_bytearray_payload(size: int = 2**31) -> bytes:
    """``[(True, bytearray(size))]`` through REDUCE of an allow-listed type: about 50 bytes."""
    return b"".join(
        [
            pickle.PROTO + b"\x04",
            pickle.EMPTY_LIST,
            pickle.NEWTRUE,
            _short("builtins"),
            _short("bytearray"),
            pickle.STACK_GLOBAL,
            _long1(size),
            pickle.TUPLE1,
            pickle.REDUCE,
            pickle.TUPLE2,
            pickle.APPEND,
            pickle.STOP,
        ]
    )


def memo_bomb_payload(index: int = 1 << 27) -> bytes:
    """A value memoised at a huge index: the C unpickler sizes its memo table by it."""
    put = pickle.LONG_BINPUT + index.to_bytes(4, "little")
    return pickle.PROTO + b"\x04" + pickle.NONE + put + pickle.STOP


def short_object_array_payload(claimed: int = 1000) -> bytes:
    """A numpy object array whose state claims ``claimed`` items but lists two.

    numpy reads past the short list (a segfault or garbage pointers), so the
    decoder must refuse it before numpy sees it.
    """
    import numpy

    proper = pickle.dumps([(True, numpy.array([1, None], dtype=object))], protocol=4)
    # The state tuple holds (2,) as the shape: BININT1 2, TUPLE1. Swap in the claim.
    marker = pickle.BININT1 + b"\x02" + pickle.TUPLE1
    assert proper.count(marker) == 1
    claim = pickle.BININT + claimed.to_bytes(4, "little")
    return proper.replace(marker, claim + pickle.TUPLE1)
