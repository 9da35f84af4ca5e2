"""What ``bin/pyboinc_compare`` runs for BOINC's ``script_validator``.

The handler is :mod:`boinc_executor.server.compare`; this script only hands it the
arguments BOINC passes and returns its exit status, which script_validator acts on.
"""

import sys

from boinc_executor.server.compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
