"""The names the landing folder takes: FITS files by their suffix. A module of its own, free of the heavy
imports of the scan, so that the operations API checks the names it is sent by the same rule."""

FITS_SUFFIXES = (".fits", ".fit", ".fts")
#: compressed FITS: recorded and quarantined with that reason rather than silently ignored
COMPRESSED_SUFFIXES = tuple(f"{s}{c}" for s in FITS_SUFFIXES for c in (".gz", ".fz", ".bz2", ".xz", ".zip")) + (".fz",)
