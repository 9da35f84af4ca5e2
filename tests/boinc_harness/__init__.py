"""TEST STAND-IN for BOINC's C++/PHP server parts and its client, for CI without BOINC.

Not product code. The harness plays a BOINC 1.6.2 server and a 7.20.5 client against a
real MariaDB and real files, following /work/shared/boinc-facts.md: ``mariadb`` (a
server), ``schema.sql`` (BOINC's tables), ``project`` (make_project's layout and bin/
tools), ``create_work``/``xadd``/``update_versions``/``dir_hier_path``/``cancel_jobs``
(the command-line tools), ``start_stop``/``daemon_proc`` (bin/start, bin/stop and
bin/status with real daemon processes holding lockf() locks named as sched/start names
them), ``crontab`` (``crontab -l``), ``volunteer`` (the daemons' work and one client
host, stepped from a test) and ``fixtures`` (pytest fixtures). It runs whatever app
version is registered and knows nothing of the product's file protocol.
"""
