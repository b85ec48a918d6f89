"""The Dagster layer's shared parts: partitions, jobs, backfill batching and asset metadata helpers."""
