"""TEST STAND-IN for BOINC's ``bin/start`` and ``bin/stop``. Not product code.

There are no daemon processes in the harness: a test drives the daemons with
``VolunteerHost.step()`` (and restarts a stopped assimilator with
``VolunteerHost.restart_daemons()``). These commands only say so and succeed.
"""

from __future__ import annotations

from pathlib import Path


def main(argv: list[str]) -> int:
    tool = Path(argv[0]).name
    print(f"{tool}: TEST STAND-IN, nothing to do: the harness's daemons run only when a test "
          "calls VolunteerHost.step()")
    return 0
