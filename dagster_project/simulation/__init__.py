"""The simulated telescope: a tool and a test fixture, not science.

* ``telescope`` renders raw bias, flat and science frames (no I/O);
* ``night`` writes a simulated night of raw FITS frames as a telescope would, with ``truth.csv``;
* ``recovery`` scores the detected candidates against the injected truth.
"""

__all__ = ["night", "recovery", "telescope"]
