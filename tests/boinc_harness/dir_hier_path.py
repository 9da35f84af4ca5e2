"""TEST STAND-IN for BOINC's ``bin/dir_hier_path``. Not product code.

``dir_hier_path NAME`` (in the project root) prints the full staging path of NAME in the
download hierarchy and creates its fan-out directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import ConfigError, read_config


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: dir_hier_path filename", file=sys.stderr)
        return 1
    try:
        config = read_config(Path("."))
    except ConfigError:
        print("Can't parse config.xml", file=sys.stderr)
        return 1
    print(config.download_path(argv[1], create=True))
    return 0
