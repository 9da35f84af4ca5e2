"""Float-tolerant result checker and comparator for BOINC's ``script_validator``.

For replicated jobs (``min_quorum`` > 1) whose results differ in the last bits across
platforms. Bitwise validation cannot work there anyway: a result record's header names
the host that produced it. Configure it (one launcher ``<project>/bin/pyboinc_compare``,
which runs the script ``daemons/pyboinc_compare.py``, which calls :func:`main`)::

    script_validator --app pyboinc --init_script pyboinc_compare --compare_script pyboinc_compare

What actually arrives (boinc-facts §5): in 1.6.x ``split()`` breaks named tokens, so only
the bare script name works, and script_validator appends its defaults: ``files`` for the
init script and ``files files2`` for the compare script. With the app's one output file
per result, cwd ``<project>/tmp_<host>``, that is::

    ../bin/pyboinc_compare  <output of result A>                     (check one result)
    ../bin/pyboinc_compare  <output of result A> <output of result B> (compare two)

In general one path checks it and ``2n`` paths compare the first ``n`` files with the last
``n``. Options (only a launcher can pass them; tokens in ``--compare_script`` are dropped):
``--rtol X`` (default ``$BOINC_EXECUTOR_COMPARE_RTOL`` or 1e-9), ``--atol X`` (default 0),
and ``--trust module.QualName`` (repeatable) for result types beyond the default policy.

A record is decoded under the default :class:`~boinc_executor.protocol.decoding.TypePolicy`, so a
hostile pickle runs nothing and is simply invalid. Floats and complex numbers (and numpy
float arrays, when numpy is importable) must agree within the relative tolerance, NaN
matching NaN; everything else must be equal and of the same type. Calls that failed match
when they raised the same exception type. Error records match when their error types do.

Exit status: check: 0 well-formed result record, 1 invalid; compare: 0 match, 1 mismatch
(or an invalid record); either: 3 for arguments it cannot use, which a check treats as
"transient, retry later" so a misconfiguration never invalidates honest results.
"""

from __future__ import annotations

import cmath
import math
import os
import re
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import protocol
from ..protocol.decoding import TypePolicy

__all__ = ["agree", "close", "main"]

USAGE = 3
_BOINC_OUTPUT = re.compile(r"(.+)_[0-9]+_r[0-9]+_[0-9]+")  # <wu>_<n>_r<random>_<i>


def load(path: Path, policy: TypePolicy) -> protocol.ResultRecord:
    """Decode a result record safely.

    Raises:
        ProtocolError, ResultDecodeError: malformed, unsafe or for another job.
        OSError: unreadable.
    """
    data = protocol.read_bounded(path, protocol.DEFAULT_MAX_RESULT_BYTES)
    header, _ = protocol.decode_frame(data, "result")
    job, calls = header.get("job"), header.get("calls")
    if not isinstance(job, str) or protocol.parse_job_name(job) is None:
        raise protocol.ProtocolError(f"{path.name}: the record names no job")
    # BOINC names the output after its result, and the result after the WU (= the job).
    boinc_name = _BOINC_OUTPUT.fullmatch(path.name)
    if boinc_name and boinc_name.group(1) != job:
        raise protocol.ProtocolError(f"{path.name}: the record is for job {job!r}")
    expect = calls if isinstance(calls, int) and not isinstance(calls, bool) else -1
    return protocol.decode_result(data, policy, expect_job=job, expect_calls=expect)


def close(a: Any, b: Any, rtol: float, atol: float, depth: int = 0) -> bool:
    """Whether two decoded values agree: floats within tolerance, the rest exactly."""
    if type(a) is not type(b) or depth > 200:
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    if isinstance(a, complex):
        if cmath.isnan(a) or cmath.isnan(b):
            return close(a.real, b.real, rtol, atol) and close(a.imag, b.imag, rtol, atol)
        return cmath.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    numpy = sys.modules.get("numpy")  # present only if a payload named a numpy type
    if numpy is not None and isinstance(a, (numpy.ndarray, numpy.generic)):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype.kind in "fc":
            return bool(numpy.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
        if a.dtype.kind == "O":
            return close(a.tolist(), b.tolist(), rtol, atol, depth + 1)
        return bool(numpy.array_equal(a, b))
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(close(a[k], b[k], rtol, atol, depth + 1) for k in a)
    if isinstance(a, (list, tuple, deque)):
        return len(a) == len(b) and all(
            close(x, y, rtol, atol, depth + 1) for x, y in zip(a, b, strict=True)
        )
    return bool(a == b)


def error_type(info: Any) -> tuple[str, str]:
    """What two failures must share to match: the exception's module and type."""
    if not isinstance(info, Mapping):
        return ("", "")
    return (str(info.get("module", "")), str(info.get("type", "")))


def agree(a: protocol.ResultRecord, b: protocol.ResultRecord, rtol: float, atol: float) -> bool:
    """Whether two results of the same job are equivalent."""
    if a.job != b.job or a.ok != b.ok or len(a.outcomes) != len(b.outcomes):
        return False
    if not a.ok:
        return error_type(a.error) == error_type(b.error)
    for (ok_a, value_a), (ok_b, value_b) in zip(a.outcomes, b.outcomes, strict=True):
        if ok_a != ok_b:
            return False
        same = (
            close(value_a, value_b, rtol, atol)
            if ok_a
            else (error_type(value_a) == error_type(value_b))
        )
        if not same:
            return False
    return True


def parse(argv: list[str]) -> tuple[float, float, list[str], list[str]]:
    """``(rtol, atol, trusted types, paths)`` from the command line.

    Raises:
        ValueError: an option without a usable value, or no usable number of paths.
    """
    args = [a for a in argv if a != ""]  # system()'s double space is harmless; be sure
    rtol = float(os.environ.get("BOINC_EXECUTOR_COMPARE_RTOL") or 1e-9)
    atol, trusted = 0.0, []
    while args and args[0] in ("--rtol", "--atol", "--trust"):
        if len(args) < 2:
            raise ValueError(f"{args[0]} needs a value")
        if args[0] == "--trust":
            trusted.append(args[1])
        elif args[0] == "--rtol":
            rtol = float(args[1])
        else:
            atol = float(args[1])
        args = args[2:]
    if not (rtol >= 0 and atol >= 0):
        raise ValueError("tolerances must be non-negative numbers")
    if not args or (len(args) > 1 and len(args) % 2):
        raise ValueError("expected one output file to check or 2n files to compare")
    return rtol, atol, trusted, args


def main(argv: list[str]) -> int:
    """Run as script_validator does; ``argv`` excludes the program name."""
    try:
        rtol, atol, trusted, paths = parse(argv)
    except ValueError as exc:
        print(f"pyboinc_compare: unusable arguments {argv!r}: {exc}", file=sys.stderr)
        return USAGE
    policy = TypePolicy(trusted)
    try:
        records = [load(Path(p), policy) for p in paths]
    except Exception as exc:  # any failure to read a volunteer's record makes it invalid
        print(f"pyboinc_compare: invalid result: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if len(records) == 1:
        return 0  # the init script's check: a well-formed record
    half = len(records) // 2
    pairs = zip(records[:half], records[half:], strict=True)
    try:
        same = all(agree(x, y, rtol, atol) for x, y in pairs)
    except Exception as exc:  # a value whose == raises cannot be shown equal
        print(f"pyboinc_compare: cannot compare: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not same:
        print(f"pyboinc_compare: results differ: {' '.join(paths)}", file=sys.stderr)
    return 0 if same else 1
