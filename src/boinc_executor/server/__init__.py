"""What runs on the BOINC server: configuring a project for boinc-executor.

:mod:`.project` is ``setup-project``; :mod:`.appversion` builds the app versions and the
volunteer-side ``pyboinc.zip``; :mod:`.daemonconf` writes the daemons' ``config.xml``
entries and ``bin/`` launchers; :mod:`.assimilator` and :mod:`.compare` are the handlers
BOINC's script_assimilator and script_validator run (through the thin scripts in
``daemons/`` and the launchers); :mod:`.doctor` and :mod:`.restart` check the project
and restart its daemons.
"""
