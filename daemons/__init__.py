"""The scripts BOINC's daemons run for boinc-executor (see docs/daemons.md).

In a wheel these files are the package ``boinc_executor._daemons``; in a source tree they
live in ``daemons/``. Each is a thin script, run by a small launcher that setup-project
installs in ``<project>/bin``, calling a handler of :mod:`boinc_executor.server`:

* ``pyboinc_assimilator`` (:mod:`boinc_executor.server.assimilator`):
  ``script_assimilator --script pyboinc_assimilator``; delivers a work unit's result (or
  an error record) into ``BATCH_DIR/new/``.
* ``pyboinc_compare`` (:mod:`boinc_executor.server.compare`):
  ``script_validator --init_script/--compare_script pyboinc_compare``; checks a result
  record, or compares two with a float tolerance.
"""
