"""The command line: ``python -m dagster_project <command>`` (``main``), one module per command group.

* ``main`` -- the parser and the pipeline commands (init, demo, process, simulate-night, status, ...);
* ``operations`` -- the operations ledger and the ``backfill`` command;
* ``results`` -- observation requests and ObservationResult commands;
* ``runner`` -- the headless daemon that ``process`` runs (sensors evaluated in-process);
* ``args`` -- argument types shared by the groups (one line and exit code 2 on a bad value).
"""

from dagster_project.cli.main import main

__all__ = ["main"]
