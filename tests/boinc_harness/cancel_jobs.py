"""TEST STAND-IN for BOINC's ``bin/cancel_jobs min-ID max-ID``. Not product code.

Like backend_lib.cpp cancel_jobs(): unsent results of the WUs become OVER/DIDNT_NEED,
and the WUs get error_mask |= 16 (CANCELLED) and transition_time=now. The transitioner
then adds 8 (TOO_MANY_TOTAL_RESULTS) when it finds it cannot make a new result (facts §2).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import DIDNT_NEED, OVER, UNSENT, WU_CANCELLED, ConfigError, read_config
from .templates import atoi


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not atoi(argv[1]) or not atoi(argv[2]):
        print("Usage: cancel_jobs min-ID max-ID", file=sys.stderr)
        return 1
    low, high = atoi(argv[1]), atoi(argv[2])
    try:
        config = read_config(Path("."))
    except ConfigError:
        return 1
    conn = config.connect()
    try:
        cur = conn.cursor()
        cur.execute(
            "update result set server_state=%s, outcome=%s "
            "where server_state=%s and workunitid>=%s and workunitid<=%s",
            (OVER, DIDNT_NEED, UNSENT, low, high))
        cur.execute(
            "update workunit set error_mask=error_mask|%s, transition_time=%s "
            "where id>=%s and id<=%s", (WU_CANCELLED, int(time.time()), low, high))
    finally:
        conn.close()
    return 0
