"""What runs on the BOINC server: configuring a project for boinc-executor.

:mod:`.project` is ``setup-project``; :mod:`.appversion` builds the app versions and the
volunteer-side ``pyboinc.zip``; :mod:`.daemonconf` writes the daemons' ``config.xml``
entries and ``bin/`` launchers. The daemon handlers themselves live in ``daemons/``.
"""
