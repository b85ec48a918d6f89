"""A frame's depth measured on the frame itself, and the labelled real/bogus examples the same fakes give.

Every difference can say how deep it went: fake point sources are injected into a copy of the new frame and
put through the very subtraction and detection the frame went through
(:func:`~dagster_project.science.difference.difference_with_added_flux`, steps 10-11 only), and the fraction
found as a function of their S/N is fitted with ``Phi((s - s50) / width)``
(:func:`~dagster_project.science.injection.completeness_fit`). The ideal detector thresholding at 5 sigma has
``s50 = 5`` and ``width = 1`` (../shared/notes/measuring-detection-depth.md).

Conventions
-----------
* S/N of a fake: the **ideal-difference S/N**, ``s = F / sigma_F`` with ``sigma_F`` ZOGY's PSF-photometry flux
  error at its position (``flux_err``, new-image e-), which carries the noise of the new image and of the
  reference: the S/N an ideal subtraction reaches, so that a perfect pipeline measures ``s50 = 5``. Each fake's
  target S/N in the new image alone (``snr_new``, drawn log-uniformly over ``snr_range``) sets its flux.
* A fake is found when a positive candidate at the pipeline's threshold lies within ``match_radius_fwhm`` FWHM.
* ``flux50_e``: the flux at ``s50`` for the median ``sigma_F`` of the frame (e-), e.g. for a magnitude.

Labelled examples (the training set of issue 14, the approach of DES autoScan, Goldstein et al. 2015)
---------------------------------------------------------------------------------------------------
The detection is run once more at a lowered threshold (``training_threshold``) on the injected difference;
each positive candidate becomes an example with its features and new/reference/difference cutouts:

* ``real`` (label 1): it recovers a fake;
* ``bogus`` (label 0): it shows a known artifact by the pipeline's own evidence (``is_sharp``: a cosmic ray or
  hot pixel; ``is_saturated``: a bleed or a saturated star; ``is_edge``; ``masked_fraction > 0``: on a masked
  cosmic ray, bad column or trail pixel; ``n_opposite_pixels >= dipole_pixels``: a dipole of mis-registration
  or PSF mismatch), or it lies below the pipeline's threshold (noise peaks, which outnumber real sources there);
* ``unlabelled`` (-1): anything else at or above the threshold, which may be a real transient of the frame.

Steps of :func:`measure_depth`: draw the fakes (:func:`_fakes`), inject them (:func:`_injected`), redo the
subtraction (:func:`_subtracted`), match and fit (:func:`_completeness`), label the candidates
(:func:`_labels`) and measure their features (:func:`_examples`).
"""

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from .difference import DifferenceParams, DifferenceResult, difference_with_added_flux
from .injection import CompletenessFit, completeness_fit, draw_fakes, inject_point_sources, match_fakes
from .realbogus import cutout_triplets, feature_matrix

__all__ = ["DepthConfig", "FrameDepth", "LabelledExamples", "measure_depth"]

#: an example's label
REAL, BOGUS, UNLABELLED = 1, 0, -1


@dataclass(frozen=True)
class DepthConfig:
    """How many fakes, over which S/N, and how the examples are cut and labelled."""

    n_fakes: int = 200
    snr_range: tuple[float, float] = (3.0, 20.0)
    match_radius_fwhm: float = 1.0
    training_threshold: float = 4.0
    dipole_pixels: int = 3
    cutout_size: int = 21


@dataclass
class FrameDepth:
    """The completeness measured on one frame (module notes)."""

    fit: CompletenessFit
    flux50_e: float
    fakes: Table  # x, y, flux, snr_new, snr, found


@dataclass
class LabelledExamples:
    """One row per positive candidate of the injected difference at the lowered threshold."""

    features: np.ndarray  # (n, len(realbogus.FEATURES)) float32
    triplets: np.ndarray  # (n, 3, size, size) float32
    label: np.ndarray  # int8: REAL, BOGUS, UNLABELLED
    reason: np.ndarray  # str: "fake", "sharp", "saturated", "edge", "masked", "dipole", "below threshold", ""
    snr: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def measure_depth(result: DifferenceResult, params: DifferenceParams | None = None,
                  config: DepthConfig = DepthConfig(), rng: np.random.Generator | None = None
                  ) -> tuple[FrameDepth, LabelledExamples]:
    """The frame's completeness by injected fakes, and the labelled examples of its injected difference.

    Parameters
    ----------
    result : DifferenceResult
        Of :func:`~dagster_project.science.difference.difference_images` on the frame.
    params : DifferenceParams, optional
        Those ``result`` was made with.
    config : DepthConfig
    rng : numpy.random.Generator, optional
        Positions, S/N and the fakes' Poisson noise (default: seeded 0, so a frame's depth is reproducible).

    Returns
    -------
    (FrameDepth, LabelledExamples)

    Examples
    --------
    >>> from dagster_project.science.astrometry import nominal_wcs_header
    >>> from dagster_project.science.difference import difference_images
    >>> from dagster_project.science.images import ImagePlanes
    >>> from dagster_project.science.masks import empty_mask
    >>> from dagster_project.science.psf_models import render_point_sources
    >>> rng = np.random.default_rng(2)
    >>> yy, xx = np.mgrid[20:160:30, 20:160:30] + rng.uniform(-5, 5, (2, 5, 5))
    >>> x, y, f = xx.ravel(), yy.ravel(), 10 ** rng.uniform(4, 5, 25)
    >>> def planes(fwhm):
    ...     sky = render_point_sources((160, 160), x, y, f, fwhm) + 300
    ...     data = (sky + rng.normal(size=sky.shape) * np.sqrt(sky)).astype(np.float32)
    ...     return ImagePlanes(data, sky.astype(np.float32), empty_mask(sky.shape),
    ...                        nominal_wcs_header(150.0, 2.0, 0.6, (80.5, 80.5)))
    >>> result = difference_images(planes(2.5), planes(3.2))
    >>> depth, examples = measure_depth(result, config=DepthConfig(n_fakes=40))
    >>> len(depth.fakes), 3.0 < depth.fit.s50 < 8.0, int(np.sum(examples.label == REAL)) > 10
    (40, True, True)
    """
    params = DifferenceParams() if params is None else params
    rng = np.random.default_rng(0) if rng is None else rng
    fakes = _fakes(result, config, rng)
    added, added_variance = _injected(result, fakes, rng)
    zogy, found = _subtracted(result, added, added_variance, params, config)
    radius = config.match_radius_fwhm * result.psf_new.fwhm_px
    depth = _completeness(result, fakes, found, params, radius)
    labels, reasons = _labels(found, depth.fakes, params, config, radius)
    new = result.steps_10_11.grid.new.data + added
    return depth, _examples(found, labels, reasons, (new, result.ref_resampled.data, zogy.D), result, config)


def _fakes(result: DifferenceResult, config: DepthConfig, rng: np.random.Generator) -> Table:
    """Positions clear of the masks and of the frame's own candidates, and the flux of each target S/N."""
    kept = result.steps_10_11
    avoid = np.column_stack([np.asarray(result.candidates["x"]), np.asarray(result.candidates["y"])])
    # background-limited, as ZOGY's flux error that the measured S/N is taken from (module notes)
    fakes = draw_fakes(kept.new.variance, result.psf_new, config.n_fakes, rng, snr_range=config.snr_range,
                       shot_noise=False, mask=result.mask, avoid_xy=avoid if len(avoid) else None)
    table = fakes.table()
    table.rename_column("snr", "snr_new")
    flux_err = result.zogy.flux_err[np.rint(table["y"]).astype(int), np.rint(table["x"]).astype(int)]
    table["snr"] = np.asarray(table["flux"]) / flux_err  # the ideal-difference S/N (module notes)
    return table[np.isfinite(table["snr"])]


def _injected(result: DifferenceResult, fakes: Table, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The fakes' electrons (Poisson-drawn) and their variance, as images to add to the new frame."""
    zeros = np.zeros(result.mask.shape, np.float32)
    return inject_point_sources(zeros, zeros, result.psf_new, fakes["x"], fakes["y"], fakes["flux"], rng)


def _subtracted(result, added, added_variance, params: DifferenceParams, config: DepthConfig):
    """The injected difference and its candidates at the lowered threshold (never above the pipeline's)."""
    threshold = min(config.training_threshold, params.threshold)
    return difference_with_added_flux(result, added, added_variance, params, threshold=threshold)


def _positive(found: Table) -> np.ndarray:
    return np.flatnonzero(~np.asarray(found["is_negative"], dtype=bool))


def _completeness(result: DifferenceResult, fakes: Table, found: Table, params: DifferenceParams,
                  radius: float) -> FrameDepth:
    """Which fakes a candidate at the pipeline's threshold found (within ``radius`` px), and the completeness
    fitted to that."""
    positive = _positive(found)
    at_threshold = positive[np.asarray(found["significance"])[positive] >= params.threshold]
    match = match_fakes(fakes["x"], fakes["y"], found["x"][at_threshold], found["y"][at_threshold], radius)
    fakes["found"] = match.recovered
    fit = completeness_fit(fakes["snr"], fakes["found"])
    flux50 = float(fit.s50 * np.nanmedian(result.zogy.flux_err[::4, ::4])) if np.isfinite(fit.s50) else np.nan
    return FrameDepth(fit, flux50, fakes)


def _labels(found: Table, fakes: Table, params: DifferenceParams, config: DepthConfig, radius: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Label and reason of every candidate of the injected difference (module notes); negatives unlabelled."""
    n = len(found)
    label, reason = np.full(n, UNLABELLED, np.int8), np.full(n, "", dtype=object)
    positive = _positive(found)
    match = match_fakes(fakes["x"], fakes["y"], found["x"][positive], found["y"][positive], radius)
    evidence = (("sharp", found["is_sharp"]), ("saturated", found["is_saturated"]), ("edge", found["is_edge"]),
                ("masked", np.asarray(found["masked_fraction"]) > 0),
                ("dipole", np.asarray(found["n_opposite_pixels"]) >= config.dipole_pixels),
                ("below threshold", np.asarray(found["significance"]) < params.threshold))
    for name, shown in reversed(evidence):  # the first reason listed wins
        hit = positive[np.asarray(shown, dtype=bool)[positive]]
        label[hit], reason[hit] = BOGUS, name
    fake = positive[match.is_fake]
    label[fake], reason[fake] = REAL, "fake"
    return label, reason


def _examples(found: Table, labels: np.ndarray, reasons: np.ndarray, images, result: DifferenceResult,
              config: DepthConfig) -> LabelledExamples:
    """Features and cutouts of the positive candidates."""
    keep = _positive(found)
    rows = found[keep]
    triplets = cutout_triplets(*images, rows["x"], rows["y"], size=config.cutout_size)
    features = feature_matrix(rows, triplets, psf_fwhm=result.psf_new.fwhm_px)
    return LabelledExamples(features, triplets, labels[keep], reasons[keep].astype(str),
                            np.asarray(rows["snr"], float), np.asarray(rows["x"], float),
                            np.asarray(rows["y"], float))
