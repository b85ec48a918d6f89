"""The operations ledger: who did what to the catalog, and what Dagster ran for it.

* ``recording`` -- recording operations (no Dagster): the run tag naming an operation, landing-folder
  scans, sensor waves, the process that owns an operation;
* ``mirror`` -- the mirror of Dagster runs into the ledger and provenance (runs, steps, artifacts with
  checksums, input links) and keeping operations true as their runs end; the ledger sensor
  (``sensors/ledger.py``), the CLI and the headless runner use it. Public Dagster API only.
"""

__all__ = ["mirror", "recording"]
