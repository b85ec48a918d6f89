"""ZOGY difference images and the transient candidates found in them (group ``detection``).

Each module defines the asset of its name; ``definitions.py`` loads them with the package.
"""

__all__ = ["candidates", "difference_image"]
