"""The operations ledger: who did what to the catalog, and the mirror of Dagster runs (``recording``)."""
