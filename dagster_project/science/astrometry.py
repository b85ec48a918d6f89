"""A celestial WCS for a frame written without one.

* :func:`nominal_wcs_header`: the TAN WCS a camera's geometry (pixel scale, rotation,
  parity) implies when the frame's pointing (its RA/Dec keywords) falls on the centre
  of its data section. Good to the telescope's pointing error: a first guess only.
* :func:`solve_wcs`: the frame's stars registered onto those of an *anchor*, a
  calibrated frame of the same field with a WCS (:func:`~.registration.register_images`:
  guided by the nominal WCS when there is one, by asterisms otherwise). The affine map
  from the new frame's pixels to the anchor's, composed with the anchor's TAN WCS, is
  again a TAN WCS (same tangent point, CD matrix times the linear part), so the solved
  WCS is exact up to the registration residuals and the anchor's own WCS error.
"""

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from .images import ImagePlanes
from .psf import ImageQuality, psf_photometry
from .registration import Registration, RegistrationError, register_images

__all__ = ["AstrometryError", "WcsSolution", "nominal_wcs_header", "solve_wcs", "star_positions"]


class AstrometryError(RuntimeError):
    """No WCS could be solved for the frame; the message says why."""


def nominal_wcs_header(ra_deg: float, dec_deg: float, pixel_scale_arcsec: float, crpix: tuple[float, float], *,
                       rotation_deg: float = 0.0, east: str = "left") -> fits.Header:
    """TAN WCS cards (CD matrix) with ``(ra_deg, dec_deg)`` at the 1-based pixel ``crpix``.

    ``rotation_deg`` follows the ``CROTA2`` convention (0: north up); ``east='left'``
    is the sky as seen on the sky (RA grows to the left), ``'right'`` a mirrored camera.

    Examples
    --------
    >>> header = nominal_wcs_header(150.0, 2.0, 0.6, (1024.5, 1024.5))
    >>> header["CTYPE1"], round(header["CD1_1"] * 3600, 6), round(header["CD2_2"] * 3600, 6)
    ('RA---TAN', -0.6, 0.6)
    """
    if not pixel_scale_arcsec > 0:
        raise ValueError(f"pixel scale must be > 0, got {pixel_scale_arcsec}")
    if east not in ("left", "right"):
        raise ValueError(f"east must be 'left' or 'right', got {east!r}")
    scale = pixel_scale_arcsec / 3600.0
    rho = np.deg2rad(rotation_deg)
    cd = np.array([[-scale * np.cos(rho), -scale * np.sin(rho)], [-scale * np.sin(rho), scale * np.cos(rho)]])
    if east == "right":
        cd[:, 0] *= -1
    header = fits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = float(ra_deg) % 360.0, float(dec_deg)
    header["CRPIX1"], header["CRPIX2"] = float(crpix[0]), float(crpix[1])
    for (i, j), value in np.ndenumerate(cd):
        header[f"CD{i + 1}_{j + 1}"] = float(value)
    header["RADESYS"] = "ICRS"
    return header


@dataclass
class WcsSolution:
    """A solved WCS and how it was found.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        TAN WCS of the new frame (0-based pixels of the calibrated, trimmed image).
    registration : Registration
        Anchor pixels -> new pixels; ``rms`` and ``n_matched`` measure the solution.
    pixel_scale_arcsec : float
    """

    wcs: WCS
    registration: Registration
    pixel_scale_arcsec: float

    def header(self) -> fits.Header:
        """The WCS as header cards (CD matrix)."""
        header = self.wcs.to_header()
        for key in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2"):
            header.remove(key, ignore_missing=True)
        for (i, j), value in np.ndenumerate(self.wcs.wcs.cd):
            header[f"CD{i + 1}_{j + 1}"] = float(value)
        return header


def star_positions(planes: ImagePlanes, quality: ImageQuality) -> Table:
    """PSF-fitted positions (``x``, ``y``, brightest first) of the stars :func:`~.psf.characterize_image` found."""
    image = (planes.data - quality.background.background).astype(np.float32)
    stars = quality.stars
    fitted = psf_photometry(image, planes.variance, planes.mask, quality.psf, stars["x"], stars["y"],
                            fit_positions=True)
    return fitted[np.isfinite(fitted["flux"]) & np.isfinite(fitted["x"]) & np.isfinite(fitted["y"])]


def _composed_wcs(anchor_wcs: WCS, registration: Registration) -> WCS:
    """The anchor's TAN WCS seen through ``registration`` (anchor px -> new px): the new frame's WCS."""
    anchor = anchor_wcs.celestial
    if anchor.sip is not None or anchor.has_distortion:
        raise AstrometryError("the anchor's WCS has distortion terms, which a linear solution cannot carry")
    if not all(str(c).endswith("-TAN") for c in anchor.wcs.ctype):
        raise AstrometryError(f"the anchor's WCS is not a TAN projection ({', '.join(anchor.wcs.ctype)})")
    to_anchor = np.linalg.inv(registration.matrix)[:2, :2]
    crpix_new = np.array(registration.ref_to_new(anchor.wcs.crpix[0] - 1.0, anchor.wcs.crpix[1] - 1.0)) + 1.0
    solved = WCS(naxis=2)
    solved.wcs.ctype = list(anchor.wcs.ctype)
    solved.wcs.cunit = [str(unit) for unit in anchor.wcs.cunit]
    solved.wcs.crval = anchor.wcs.crval
    solved.wcs.crpix = crpix_new
    solved.wcs.cd = anchor.pixel_scale_matrix @ to_anchor
    solved.wcs.radesys = anchor.wcs.radesys or "ICRS"
    if np.isfinite(anchor.wcs.equinox):
        solved.wcs.equinox = anchor.wcs.equinox
    solved.wcs.set()
    return solved


def solve_wcs(new_sources: Table, anchor_sources: Table, anchor_wcs: WCS, first_guess: WCS | None = None, *,
              max_offset_px: float = 100.0, match_radius: float = 3.0, min_matches: int = 6,
              max_rms: float = 0.3) -> WcsSolution:
    """Solve the new frame's WCS from its stars and an anchor frame's (same field, with a WCS).

    Parameters
    ----------
    new_sources, anchor_sources : Table
        Star positions ``x``, ``y`` (0-based px), brightest first.
    anchor_wcs : WCS
        The anchor's celestial TAN WCS.
    first_guess : WCS, optional
        The new frame's nominal WCS; without it the stars are matched by asterisms alone.
    max_offset_px : float
        Largest error of the first guess corrected (the pointing error, in px).
    match_radius, min_matches, max_rms : float, int, float
        Passed to :func:`~.registration.register_images`.

    Returns
    -------
    WcsSolution

    Raises
    ------
    AstrometryError
        With the reason (too few stars, no consistent match, residuals too large).

    Examples
    --------
    Thirty stars of an anchor with a 0.6 arcsec/px TAN WCS, seen 7 px to the left and 4 px up:

    >>> from astropy.wcs import WCS
    >>> anchor_wcs = WCS(nominal_wcs_header(150.0, 2.0, 0.6, (100.5, 100.5)))
    >>> rng = np.random.default_rng(0)
    >>> anchor = Table({"x": rng.uniform(0, 200, 30), "y": rng.uniform(0, 200, 30)})
    >>> new = Table({"x": anchor["x"] - 7.0, "y": anchor["y"] + 4.0})
    >>> solution = solve_wcs(new, anchor, anchor_wcs)  # no first guess: matched by asterisms
    >>> [round(float(v), 6) for v in solution.wcs.wcs.crpix], round(solution.pixel_scale_arcsec, 6)
    ([93.5, 104.5], 0.6)
    """
    if anchor_wcs is None or not anchor_wcs.has_celestial:
        raise AstrometryError("the anchor frame has no celestial WCS")
    try:
        registration = register_images(
            new_sources, anchor_sources, first_guess, anchor_wcs, match_radius=match_radius,
            max_wcs_offset=max_offset_px, min_matches=min_matches, max_rms=max_rms)
    except RegistrationError as exc:
        raise AstrometryError(str(exc).replace("register the reference", "match the anchor's stars")) from None
    solved = _composed_wcs(anchor_wcs, registration)
    scales = proj_plane_pixel_scales(solved)
    return WcsSolution(solved, registration, float(np.sqrt(scales[0] * scales[1]) * 3600.0))
