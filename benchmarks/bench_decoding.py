"""What the bounded decoder costs, and what hostile payloads cost it, in one run.

Run ``python benchmarks/bench_decoding.py``. For honest payloads it prints the time
of ``safe_loads`` (the decoder results go through) against plain ``pickle.loads``
(the C unpickler, no checks), best of several runs, and which reader ``safe_loads``
chose. For hostile payloads it prints how long refusing them takes and how much the
process grew. Timing is not a test: the exit status is non-zero only when an honest
payload is refused, or a hostile one grows the process by more than 200 MB or takes
more than 5 s.
"""

from __future__ import annotations

import pickle
import resource
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boinc_executor.errors import ResultDecodeError
from boinc_executor.protocol import bounded
from boinc_executor.protocol.decoding import TypePolicy, safe_loads
from tests import hostile_records as hostile

POLICY = TypePolicy()


def honest() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = [
        ("one int", [(True, 9)]),
        ("100 ints (a map chunk)", [(True, -i) for i in range(1000, 1100)]),
        ("dict of 100 str keys", [(True, {f"k{i}": i for i in range(100)})]),
        ("1M floats", [(True, [float(i) for i in range(1_000_000)])]),
        ("100k small dicts", [(True, [{"a": i, "b": str(i)} for i in range(100_000)])]),
    ]
    try:
        import numpy
    except ImportError:
        return cases
    return [*cases, ("80 MB numpy array", [(True, numpy.random.rand(10_000_000))])]


def best(fn: Any, budget: float = 1.0) -> float:
    once = timeit.timeit(fn, number=1)
    number = max(1, int(budget / max(once, 1e-6) / 5))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def main() -> int:
    failed = False
    print("honest payloads (machine may be loaded: compare the ratio, not the times)")
    columns = ("bytes", 11), ("reader", 8), ("safe_loads", 11), ("C pickle", 10), ("ratio", 6)
    print(f"{'payload':28}" + "".join(f" {title:>{width}}" for title, width in columns))
    for name, value in honest():
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        reader = "C" if bounded.fast_path_ok(data) else "bounded"
        try:
            safe = best(lambda d=data: safe_loads(d, POLICY))
        except ResultDecodeError as exc:
            print(f"{name:28} REFUSED: {exc}")
            failed = True
            continue
        plain = best(lambda d=data: pickle.loads(d))
        print(
            f"{name:28} {len(data):>11,} {reader:>8} {safe * 1e3:>9.3f}ms "
            f"{plain * 1e3:>8.3f}ms {safe / plain:>6.1f}"
        )
    print()
    print("hostile payloads")
    print(f"{'payload':34} {'bytes':>11} {'outcome':>9} {'took':>9} {'max RSS growth':>15}")
    for name, payload in (
        ("bytearray(2**31) via REDUCE", hostile.huge_bytearray_payload()),
        ("LONG_BINPUT 2**27", hostile.memo_bomb_payload()),
        ("100k int keys of equal hash", hostile.colliding_dict_payload(100_000)),
        ("numpy object array, short state", hostile.short_object_array_payload()),
    ):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = timeit.default_timer()
        try:
            safe_loads(payload, POLICY)
            outcome = "decoded"  # harmless: the bounded reader's memo is a dict
        except ResultDecodeError:
            outcome = "refused"
        took = timeit.default_timer() - start
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        failed = failed or grown > 200 * 1024 or took > 5
        print(f"{name:34} {len(payload):>11,} {outcome:>9} {took * 1e3:>7.1f}ms {grown:>11,} KiB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
