"""Raw frames: the archived raw observation and its calibrated image (group ``calibration``).

Each module defines the asset of its name; ``definitions.py`` loads them with the package.
"""

__all__ = ["calibrated_image", "raw_observation"]
