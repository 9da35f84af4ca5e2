"""What ``bin/pyboinc_assimilator`` runs for BOINC's ``script_assimilator``.

The handler is :mod:`boinc_executor.server.assimilator`; this script only hands it the
arguments BOINC passes and returns its exit status, which script_assimilator acts on.
"""

import sys

from boinc_executor.server.assimilator import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
