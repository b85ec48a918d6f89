"""Staging: copies of archived raw files to a folder below the staging root, as a staging request of the
operations API asks (``copying.stage``), recorded with its progress and in the operations ledger. Dagster-free:
``pipeline/staging.py`` runs it as the ``staging_job``."""

from dagster_project.staging.copying import StagingOutcome, stage

__all__ = ["StagingOutcome", "stage"]
