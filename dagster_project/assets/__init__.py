"""The assets, one package per domain; ``definitions.py`` loads each package's assets under its group.

Each module of a domain package defines the asset of its name (with
:func:`~dagster_project.pipeline.observation_asset`), naming its upstream assets by key: no domain
imports another.
"""

__all__ = ["detection", "observations", "products", "references"]
