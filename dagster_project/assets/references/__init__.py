"""The reference image of each field and band (group ``references``).

Each module defines the asset of its name; ``definitions.py`` loads them with the package.
"""

__all__ = ["reference_image"]
