"""The simulated telescope: a tool and a test fixture, not science.

* ``telescope`` renders raw bias, flat and science frames (no I/O);
* ``artifacts`` renders the optional artifacts of a science frame (trails, flickering columns,
  hot pixels, odd bright-star PSFs, local distortion, ghosts) and describes every artifact's truth;
* ``night`` writes a simulated night of raw FITS frames as a telescope would, with ``truth.csv``
  (each transient's class: supernova on a galaxy, variable star, or hostless transient; and, with
  artifacts, their truth file);
* ``recovery`` scores the detected candidates against the injected truth.
"""

__all__ = ["artifacts", "night", "recovery", "telescope"]
