"""Astronomical data platform on Dagster.

Layers: ``science`` (pure array/header algorithms), ``catalog`` (SQLAlchemy
models, migrations, state machines), ``ingest`` (file validation and
registration), and the Dagster layer (``assets``, ``resources``, ``sensors``,
``definitions``) that wires them together.
"""
