"""The ``pyboinc`` app's work-unit templates, as setup-project writes them (boinc-facts §3).

``templates/pyboinc_in`` names the two inputs (the shared program file and the job's
data file) and ``templates/pyboinc_out`` the one output, under the open names the
runner uses. The remote backend's templates are built from these
(``server/remote.py``).
"""

from __future__ import annotations

from ..protocol.names import OPEN_DATA, OPEN_PROGRAM, OPEN_RESULT
from ..protocol.records import DEFAULT_MAX_RESULT_BYTES

__all__ = ["input_template", "output_template"]


def input_template() -> str:
    """``templates/pyboinc_in``: program file (shared, ``<no_delete/>``) and data file.

    No ``rsc_*``, ``delay_bound`` or quorum values: template values would override the
    executor's ``JobParams`` on create_work's command line (boinc-facts §3).
    """
    return f"""<input_template>
    <file_info>
        <number>0</number>
        <no_delete/>
    </file_info>
    <file_info>
        <number>1</number>
    </file_info>
    <workunit>
        <file_ref>
            <file_number>0</file_number>
            <open_name>{OPEN_PROGRAM}</open_name>
            <copy_file/>
        </file_ref>
        <file_ref>
            <file_number>1</file_number>
            <open_name>{OPEN_DATA}</open_name>
            <copy_file/>
        </file_ref>
    </workunit>
</input_template>
"""


def output_template() -> str:
    """``templates/pyboinc_out``: one output, ``result.pkl``, capped at the record size limit."""
    return f"""<output_template>
    <file_info>
        <name><OUTFILE_0/></name>
        <generated_locally/>
        <upload_when_present/>
        <max_nbytes>{DEFAULT_MAX_RESULT_BYTES}</max_nbytes>
        <url><UPLOAD_URL/></url>
    </file_info>
    <result>
        <file_ref>
            <file_name><OUTFILE_0/></file_name>
            <open_name>{OPEN_RESULT}</open_name>
            <copy_file/>
        </file_ref>
    </result>
</output_template>
"""
