"""The engines behind ``BoincExecutor``, swapped through one seam (:mod:`.base`).

* :mod:`.local` -- the embedded backend: local worker processes play the volunteers
  (:mod:`.local_worker`, dealt by :mod:`.dealing`; batch IDs from :mod:`.registry`);
* :mod:`.boinc` -- a real BOINC project: staging, ``create_work``, the project database
  (:mod:`.db` is the only module that imports ``MySQLdb``).

Backends are imported lazily by :func:`.base.load_backend`, so importing the package
never pulls in ``MySQLdb``.
"""
