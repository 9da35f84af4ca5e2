"""The ``boinc-executor`` command line.

``boinc-executor setup-project PROJECT_DIR`` turns an existing BOINC project into one
that runs ``BoincExecutor`` jobs (see :mod:`boinc_executor.server.project` and
docs/operator-guide.md); ``boinc-executor status BATCH_ID`` shows how far a batch got.
This module is, with the volunteer runner, the only place that configures logging;
nothing imports it.

Exit status: 0 done, 1 refused or failed (the message on stderr says what to do),
2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import BoincExecutorError
from .protocol.pack import handled_records
from .server import doctor
from .server.appversion import ALL_PLATFORMS

__all__ = ["main"]

_log = logging.getLogger("boinc_executor.cli")


def _interpreter(value: str) -> tuple[str, str]:
    platform, sep, archive = value.partition("=")
    if not sep or not archive:
        raise argparse.ArgumentTypeError(
            f"expected PLATFORM=ARCHIVE (e.g. windows_x86_64=python-3.12-embed-amd64.zip), "
            f"got {value!r}"
        )
    if platform not in ALL_PLATFORMS:
        raise argparse.ArgumentTypeError(
            f"unknown platform {platform!r}; choose one of {', '.join(ALL_PLATFORMS)}"
        )
    return platform, archive


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boinc-executor",
        description="Run Python functions as BOINC jobs: server-side administration.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step as it happens")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    setup = sub.add_parser(
        "setup-project",
        help="configure a BOINC project to run boinc-executor jobs (idempotent)",
        description=(
            "Add the pyboinc app, its templates, app versions for "
            f"{', '.join(ALL_PLATFORMS)}, the pyboinc_batch table, the daemon scripts "
            "and the assimilator/validator daemons to an existing BOINC project. Run it "
            "as the project's owner on the BOINC server; run it again after upgrading "
            "boinc-executor. It never starts or stops the project."
        ),
    )
    setup.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    setup.add_argument(
        "--python",
        metavar="PLATFORM=ARCHIVE",
        type=_interpreter,
        action="append",
        default=[],
        help=(
            "ship a relocatable Python for PLATFORM (a tar archive with bin/python3, or "
            "for windows_x86_64 also a zip with python.exe) instead of relying on the "
            "volunteer's python3; repeat per platform"
        ),
    )
    setup.add_argument(
        "--float-validator",
        action="store_true",
        help=(
            "validate replicated results with script_validator + pyboinc_compare "
            "(floats equal within a tolerance) instead of sample_bitwise_validator"
        ),
    )
    setup.add_argument(
        "--release",
        metavar="X.Y.Z",
        help=(
            f"number the app version as this release (default {__version__}); a higher "
            "one registers a new app version, e.g. to ship a changed runner"
        ),
    )
    setup.add_argument(
        "--remote",
        action="store_true",
        help=(
            "also prepare remote submission over the web RPCs: group-writable download "
            "directories, the pyboinc_remote_* templates, a PHP limits check "
            "(docs/remote.md)"
        ),
    )
    grant = sub.add_parser(
        "grant-submit",
        help="let a BOINC user submit pyboinc jobs remotely (user_submit, user_submit_app)",
    )
    grant.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    grant.add_argument("user", metavar="USER", help="the user's ID or e-mail address")
    purge = sub.add_parser(
        "purge-remote-outputs",
        help="delete the outputs kept for remote batches that were retired (run from cron)",
    )
    purge.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    doctor.add_arguments(
        sub.add_parser(
            "doctor",
            help="check that a BOINC project really runs boinc-executor jobs",
            description="Check the daemons, app versions, host, permissions and cron a "
            "pyboinc project needs; print each problem with its fix. Exit status 1 if any "
            "check fails.",
        )
    )
    restart = sub.add_parser(
        "restart-daemons",
        help="restart a BOINC project's daemons safely (bin/stop, wait, bin/start, check)",
        description="Run bin/stop, wait until the old daemons have released their locks, "
        "run bin/start, and check that every daemon holds its lock.",
    )
    restart.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    status = sub.add_parser(
        "status",
        help="show how far a batch on a BOINC project has got",
        description="Count a batch's work units by state and its delivered result records.",
    )
    status.add_argument("batch_id", metavar="BATCH_ID", type=int, help="the BOINC batch ID")
    status.add_argument(
        "--project",
        metavar="PROJECT_DIR",
        help="the BOINC project root (default: $PYBOINC_DIR)",
    )
    return parser


def _status(batch_id: int, project: str | None) -> int:
    from .backends.db import Database
    from .backends.stuck import Thresholds, diagnose
    from .config import ProjectConfig, resolve_project_dir

    root = resolve_project_dir(project)
    if root is None:
        print(
            "boinc-executor status: no project: give --project PROJECT_DIR or set PYBOINC_DIR",
            file=sys.stderr,
        )
        return 1
    with Database(ProjectConfig.load(root)) as db:
        record = db.batch_record(batch_id)
        counts = db.batch_counts(batch_id)
        stuck = diagnose(db, root, batch_id, Thresholds.for_project(root))
    print(f"batch {batch_id} on {root}")
    print(f"  batch directory: {record.batch_dir}")
    print(
        f"  work units: {counts.total} total, {counts.unsent} unsent, "
        f"{counts.in_progress} in progress, {counts.done} done, {counts.failed} failed"
    )
    if stuck:
        print(f"  STUCK: {stuck}")
    try:
        new = record.batch_dir / "new"
        waiting = sum(1 for _ in new.iterdir()) if new.is_dir() else 0
        handled = len(handled_records(record.batch_dir))
    except OSError as exc:
        print(f"  records: batch directory not readable from here ({exc.strerror})")
    else:
        print(f"  records: {waiting} waiting in new/, {handled} handled (in handled.pack)")
    return 0


def _setup_remote(project_dir: str) -> int:
    from .server.remote import setup_remote

    try:
        report = setup_remote(project_dir, log=lambda step: _log.info("remote: %s", step))
    except BoincExecutorError as exc:
        print(f"boinc-executor setup-project --remote: {exc}", file=sys.stderr)
        return 1
    print("Remote submission:")
    print("\n".join(f"  - {c}" for c in report.changes) or "  - nothing to change")
    if report.todo:
        print("Still to do for remote submission:")
        print("\n".join(f"  - {t}" for t in report.todo))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``boinc-executor`` script; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="boinc-executor: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "setup-project":
        from .server.project import setup_project

        interpreters = dict(args.python)
        if len(interpreters) != len(args.python):
            print("boinc-executor: --python given twice for one platform", file=sys.stderr)
            return 2
        try:
            report = setup_project(
                args.project_dir,
                interpreters=interpreters,
                float_validator=args.float_validator,
                release=args.release,
                log=lambda step: _log.info("setting up: %s", step),
            )
        except BoincExecutorError as exc:
            print(f"boinc-executor setup-project: {exc}", file=sys.stderr)
            return 1
        print(report.render())
        return _setup_remote(args.project_dir) if args.remote else 0
    if args.command in ("grant-submit", "purge-remote-outputs"):
        from .server import remote

        try:
            if args.command == "grant-submit":
                print(remote.grant_submit(args.project_dir, args.user))
            else:
                count = remote.purge_retired_outputs(args.project_dir)
                print(f"deleted {count} outputs of retired remote batches")
        except BoincExecutorError as exc:
            print(f"boinc-executor {args.command}: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "doctor":
        return doctor.main(args)
    if args.command == "restart-daemons":
        from .server.restart import main as restart_main

        return restart_main(args.project_dir)
    try:
        return _status(args.batch_id, args.project)
    except BoincExecutorError as exc:
        print(f"boinc-executor status: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
