"""The Dagster layer's shared parts: partitions, jobs, the per-partition asset factory, backfill batching,
the reference characterization both reference and difference assets use, and asset metadata helpers.

The names below are imported from their modules when first used (PEP 562), so a command that needs only the
job names (``backfill``) does not load the science libraries the characterization needs (2.7 s of its start).
"""

import importlib

#: name -> the module of this package that defines it
_EXPORTS = {
    "PartitionOutput": "batching", "batched_backfill": "batching", "materialize_partitions": "batching",
    "reference_characterization": "characterization",
    "JOB_ASSETS": "jobs", "build_jobs": "jobs", "execution": "jobs",
    "CODE_VERSION": "metadata", "NIGHTLY_FRESHNESS": "metadata", "Stopwatch": "metadata", "artifacts": "metadata",
    "inputs": "metadata", "png_markdown": "metadata", "rounded": "metadata", "size_mb": "metadata",
    "observation_asset": "asset_factory",
    "field_band_partitions": "partitions", "observations_partitions": "partitions", "results_partitions": "partitions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
