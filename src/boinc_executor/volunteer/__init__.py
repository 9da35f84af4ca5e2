"""What runs on a volunteer's host: the runner, shipped in ``pyboinc.zip``.

It imports only :mod:`boinc_executor.protocol` and :mod:`boinc_executor.errors` (and
cloudpickle), never anything server-side, and runs under ``python -S``.
"""
