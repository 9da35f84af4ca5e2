"""The slave of the PyBOINC example: it runs on a volunteer, once per input."""

import app_types

from boinc_executor import pyboinc_get_input, pyboinc_return_output

input = pyboinc_get_input()
output = app_types.Output(input.value * input.value)
pyboinc_return_output(output)
