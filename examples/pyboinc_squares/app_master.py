"""The master of the PyBOINC example: the sum of the squares of 0..99.

Run ``python app_master.py`` in this directory. Without ``PYBOINC_DIR`` the embedded
backend runs the slaves on this machine; with ``PYBOINC_DIR`` set to a project
configured by ``boinc-executor setup-project`` they run on its volunteers. If the
run is interrupted (^C), run it again here: no job is created twice.
"""

import app_types

from boinc_executor import pyboinc_call, pyboinc_master


def make_calls():
    for i in range(100):
        input = app_types.Input(i)
        pyboinc_call("app_slave.py", input)


def handle_result(output):
    global sum  # noqa: PLW0603 - the design's module-level total
    sum += output.value


sum = 0

pyboinc_master(make_calls, handle_result)

print(f"The answer is {sum}")
