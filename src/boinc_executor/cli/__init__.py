"""The ``boinc-executor`` command line (also ``python -m boinc_executor``).

Batches, on the embedded backend and on a BOINC project alike: ``list``,
``status ID [--watch]``, ``wait ID``, ``results ID``, ``errors ID``,
``output ID CALL``, ``cancel ID``, ``retire ID`` (``remove ID``) and ``clean``
(:mod:`.batches`); a BOINC server's administration: ``setup-project``
(:mod:`.admin`), ``doctor`` and ``restart-daemons`` (:mod:`.doctor`). docs/cli.md is
generated from this parser.

Each command lives in a module with a ``register(subparsers)`` function that adds
its parser and sets ``run`` (``args -> exit status``); :data:`COMMAND_MODULES`
lists them, so a new command is one module and one line.

This package is, with the volunteer runner, the only place that configures
logging; nothing imports it.

Exit status (every command): 0 done; 1 refused or failed (the message on stderr
says what to do; ``wait``: a call failed or was cancelled); 2 bad usage
(``wait``: the timeout passed); 3 no such batch, or its directory is gone; 4 the
BOINC database is needed and mysqlclient is missing; 130 interrupted by ^C (the
batch is left as it is).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__

__all__ = ["COMMAND_MODULES", "main", "parser"]

#: Modules under :mod:`boinc_executor.cli` that each ``register()`` commands, in help order.
COMMAND_MODULES = ("batches", "admin", "doctor")


def parser() -> argparse.ArgumentParser:
    """The whole command line (also what the docs' CLI reference is generated from)."""
    top = argparse.ArgumentParser(
        prog="boinc-executor",
        description=(
            "Run Python functions as BOINC jobs: look after batches (local or on a BOINC "
            "project) and set up a BOINC server."
        ),
        epilog=(
            "Exit status: 0 done; 1 refused or failed (wait: a call failed); 2 bad usage "
            "(wait: timeout); 3 no such batch or its directory is gone; 4 mysqlclient "
            "missing where the BOINC database is read; 130 interrupted."
        ),
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument("-v", "--verbose", action="store_true", help="log each step as it happens")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __name__).register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``boinc-executor`` script; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="boinc-executor: %(message)s",
        stream=sys.stderr,
    )
    status: int = args.run(args)
    return status
