"""The contract every side shares: batch-dir layout, framing, records, safe decoding, file I/O.

The master, both backends, the volunteer runner and the server daemons speak only through
the files this package reads and writes (``docs/protocol.md``). It imports nothing beyond
the standard library and ``boinc_executor.errors``, so it ships in the volunteer-side
``pyboinc.zip`` as it is:

* :mod:`.names` -- batch-directory, slot, job and record names;
* :mod:`.records` -- framing, input envelopes, result and error records;
* :mod:`.errorinfo` -- exceptions and job failures described as plain data;
* :mod:`.decoding` -- the allow-list unpickler that decodes untrusted payloads;
* :mod:`.classref` -- the script's classes sent by reference and rebuilt without their code;
* :mod:`.taskoutput` -- per-call captured output and its bounds;
* :mod:`.fileio` -- atomic writes and bounded reads;
* :mod:`.pack` -- the append-only pack of handled records.
"""

from __future__ import annotations

from .names import (
    CANCEL_TAG,
    CHECKPOINT,
    FINISH_FILE,
    HANDLED_PACK,
    JOURNAL,
    LOCK,
    NEW,
    OLD,
    OPEN_DATA,
    OPEN_PROGRAM,
    OPEN_RESULT,
    QUARANTINE,
    RECORD_SUFFIX,
    check_prefix,
    data_file_name,
    is_stale_temp,
    job_name,
    parse_job_name,
    parse_record_name,
    program_file_name,
    quarantine_name,
    record_file_name,
)
from .records import (
    DEFAULT_MAX_RESULT_BYTES,
    FORMAT_VERSION,
    JOB_OUTPUT_CHARS,
    KIND_DATA,
    KIND_PROGRAM,
    KIND_RESULT,
    OUTPUT_CHARS,
    TAIL_CHARS,
    ProtocolError,
    ResultRecord,
    TaskOutput,
    all_succeeded,
    atomic_write,
    decode_frame,
    decode_result,
    deliver_record,
    encode_data,
    encode_error_record,
    encode_frame,
    encode_program,
    encode_result,
    error_info,
    failure_info,
    host_name,
    python_tag,
    read_bounded,
    read_outputs,
    tail,
)

__all__ = [
    "CANCEL_TAG",
    "CHECKPOINT",
    "DEFAULT_MAX_RESULT_BYTES",
    "FINISH_FILE",
    "FORMAT_VERSION",
    "HANDLED_PACK",
    "JOB_OUTPUT_CHARS",
    "JOURNAL",
    "KIND_DATA",
    "KIND_PROGRAM",
    "KIND_RESULT",
    "LOCK",
    "NEW",
    "OLD",
    "OPEN_DATA",
    "OPEN_PROGRAM",
    "OPEN_RESULT",
    "OUTPUT_CHARS",
    "QUARANTINE",
    "RECORD_SUFFIX",
    "TAIL_CHARS",
    "ProtocolError",
    "ResultRecord",
    "TaskOutput",
    "all_succeeded",
    "atomic_write",
    "check_prefix",
    "data_file_name",
    "decode_frame",
    "decode_result",
    "deliver_record",
    "encode_data",
    "encode_error_record",
    "encode_frame",
    "encode_program",
    "encode_result",
    "error_info",
    "failure_info",
    "host_name",
    "is_stale_temp",
    "job_name",
    "parse_job_name",
    "parse_record_name",
    "program_file_name",
    "python_tag",
    "quarantine_name",
    "read_bounded",
    "read_outputs",
    "record_file_name",
    "tail",
]
