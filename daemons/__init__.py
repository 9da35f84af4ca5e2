"""Server-side handlers BOINC's daemons run for boinc-executor (see docs/daemons.md).

In a wheel these files are the package ``boinc_executor._daemons``; in a source tree they
live in ``daemons/``. Each module is also a script with a ``main(argv)``, run by a small
launcher that setup-project installs in ``<project>/bin``:

* ``pyboinc_assimilator``: ``script_assimilator --script pyboinc_assimilator``; delivers a
  work unit's result (or an error record) into ``BATCH_DIR/new/``.
* ``pyboinc_compare``: ``script_validator --init_script/--compare_script pyboinc_compare``;
  checks a result record, or compares two with a float tolerance.
"""
