"""The calibration stage's work outside Dagster: master bias and flat frames (``masters``) and the
astrometric solution of frames without a usable WCS (``astrometry``), wiring science, store and catalog."""
