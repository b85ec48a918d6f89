"""Pure science functions: arrays, headers and dataclasses in, arrays and dataclasses out.

Conventions used throughout this package
----------------------------------------
* Arrays are in NumPy order ``[y, x]`` (FITS NAXIS2, NAXIS1).
* Pixel coordinates are 0-based (pixel centre of the first pixel is (0, 0)),
  as in astropy's ``wcs.pixel_to_world``; FITS headers and sections use 1-based.
* Calibrated images are in electrons (e-); variance in e-^2; raw frames in ADU.
* Masks are ``uint16`` bit fields, see :mod:`dagster_project.science.masks`.
"""
