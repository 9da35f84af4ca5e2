"""``python -m boinc_executor.cli``: the command line."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
