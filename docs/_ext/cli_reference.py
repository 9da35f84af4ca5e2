"""A Sphinx directive that renders the ``boinc-executor`` command line from its parser.

``{cli-reference}`` in a page becomes one section per command, each holding the
``--help`` text argparse prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class CliReference(SphinxDirective):
    """Render ``boinc-executor --help`` and every ``boinc-executor COMMAND --help``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from boinc_executor.cli import parser

        os.environ["COLUMNS"] = "90"  # argparse wraps help to the terminal width
        top = parser()
        result: list[nodes.Node] = [nodes.literal_block(text=top.format_help())]
        for name, sub in _subcommands(top).items():
            section = nodes.section(ids=[f"cli-{name}"])
            section += nodes.title(text=f"boinc-executor {name}")
            section += nodes.literal_block(text=sub.format_help())
            result.append(section)
        return result


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-reference", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
