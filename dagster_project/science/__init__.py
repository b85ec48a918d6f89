"""Pure science functions: arrays, headers and dataclasses in, arrays and dataclasses out.

Conventions used throughout this package
----------------------------------------
* Arrays are in NumPy order ``[y, x]`` (FITS NAXIS2, NAXIS1).
* Pixel coordinates are 0-based (pixel centre of the first pixel is (0, 0)),
  as in astropy's ``wcs.pixel_to_world``; FITS headers and sections use 1-based.
* Calibrated images are in electrons (e-); variance in e-^2; raw frames in ADU.
* Masks are ``uint16`` bit fields, see :mod:`dagster_project.science.masks`.

House style (see :mod:`dagster_project.science.zogy` for the model)
------------------------------------------------------------------
Each public entry point reads like its algorithm: a short body calling
small private steps (dataclasses for intermediate results), a NumPy
docstring with a doctested ``Examples`` section (``tests/science/test_doctests.py``),
no I/O and no globals. Every module lists its public names in ``__all__``.

Modules
-------
``calibration`` (raw frames to electrons, masters, cosmic rays), ``background``,
``psf`` (stars, PSF fit, image quality) and ``psf_models`` (the Moffat renderer),
``astrometry`` (a WCS from an anchor frame), ``registration`` (and resampling),
``photometric_scaling``, ``zogy`` and ``zogy_tiles`` (proper subtraction),
``detection``, ``difference`` (the whole difference step), ``forced_photometry``,
``magnitudes``, ``reference_selection`` and ``coadd`` (references), ``injection`` (fake sources and the
completeness they measure), ``depth`` (a frame's depth by injection, and the labelled examples), ``realbogus`` (candidate features, gradient boosting, its metrics),
``realbogus_cnn`` (a CNN on cutout triplets), ``scene`` (the detection type from the reference light), with the
shared ``images``, ``masks`` and ``parallel``.
"""

__all__ = [
    "astrometry",
    "background",
    "calibration",
    "coadd",
    "depth",
    "detection",
    "difference",
    "forced_photometry",
    "images",
    "injection",
    "magnitudes",
    "masks",
    "parallel",
    "photometric_scaling",
    "psf",
    "psf_models",
    "realbogus",
    "realbogus_cnn",
    "reference_selection",
    "registration",
    "scene",
    "zogy",
    "zogy_tiles",
]
