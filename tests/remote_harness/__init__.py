"""TEST STAND-IN for BOINC's remote-submission web pages (html/user/*.php of 1.6.2).

Not product code, and independent of it (it never imports ``boinc_executor``):
``web`` serves ``submit_rpc_handler.php``, ``job_file.php`` and ``get_output.php``
on a loopback port against a ``tests.boinc_harness`` project and its real MariaDB
database, following boinc-facts §10 including its traps; ``rpc_submit`` and
``rpc_files`` hold the two PHP scripts' logic; ``fixtures`` gives pytest fixtures.
"""
