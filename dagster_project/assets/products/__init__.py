"""The products of each ObservationResult (group ``products``).

Each module defines the asset of its name; ``definitions.py`` loads them with the package.
"""

__all__ = ["observation_products"]
