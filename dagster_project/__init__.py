"""Astronomical data platform on Dagster.

Dagster-free layers: ``science`` (pure algorithms), ``catalog`` (schema, states, queries, migrations),
``store``, ``ingest``, ``calibration``, ``products``, ``simulation``, ``rendering``; ``operations`` (the
ledger); the Dagster layer (``assets``, ``pipeline``, ``resources``, ``sensors``, ``definitions``); and the
drivers (``cli``). ``docs/architecture.md`` says which may import which.
"""
