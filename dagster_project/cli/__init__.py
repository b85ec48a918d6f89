"""The command line: ``python -m dagster_project <command>`` (``main``), one module per command group.

* ``main`` -- the parser and the pipeline commands (simulate-night, process, demo, status, migrate);
* ``candidates`` -- the candidate catalog (``candidates export``);
* ``results`` -- observation requests, ObservationResult and reference commands;
* ``backfill`` -- ``backfill``, and the Dagster asset backfills ``results backfill`` launches too;
* ``operations`` -- the operations ledger, provenance and ``runs tail``;
* ``runner`` -- the headless daemon that ``process`` runs (sensors evaluated in-process);
* ``args`` -- argument types shared by the groups (one line and exit code 2 on a bad value).
"""

from dagster_project.cli.main import main

__all__ = ["main"]
