"""``boinc-executor doctor`` and ``restart-daemons``: a BOINC server's health and daemons.

The checks and the restart live in :mod:`boinc_executor.server.doctor` and
:mod:`boinc_executor.server.restart`; this module only puts them on the command line.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..server import doctor

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``doctor`` and ``restart-daemons`` to the command line."""
    p = sub.add_parser(
        "doctor",
        help="check that a BOINC project really runs boinc-executor jobs",
        description="Check the daemons, app versions, host, permissions and cron a "
        "pyboinc project needs; print each problem with its fix. Exit status 1 if any "
        "check fails.",
    )
    doctor.add_arguments(p)
    p.set_defaults(run=doctor.main)
    p = sub.add_parser(
        "restart-daemons",
        help="restart a BOINC project's daemons safely (bin/stop, wait, bin/start, check)",
        description="Run bin/stop, wait until the old daemons have released their locks, "
        "run bin/start, and check that every daemon holds its lock.",
    )
    p.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    p.set_defaults(run=_restart)


def _restart(args: argparse.Namespace) -> int:
    from ..server.restart import main

    return main(args.project_dir)
