"""The smallest BoincExecutor program: it runs unchanged on a laptop and on a BOINC project.

With no BOINC project configured (no ``PYBOINC_DIR``), the embedded backend's
local worker processes play the volunteers. Set ``PYBOINC_DIR`` to a project
prepared with ``boinc-executor setup-project`` and the same code submits BOINC
work units instead.
"""

from __future__ import annotations

import logging
from concurrent.futures import as_completed

from boinc_executor import BoincExecutor


def square(x: int) -> int:
    return x * x


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with BoincExecutor() as ex:
        squares = list(ex.map(square, range(100)))
        print("sum of squares of 0..99 =", sum(squares))
        futures = [ex.submit(pow, 2, n) for n in range(5)]
        print("powers of two:", sorted(f.result() for f in as_completed(futures)))


if __name__ == "__main__":
    main()
