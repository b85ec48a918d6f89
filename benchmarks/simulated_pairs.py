"""Simulated reference/new pairs with their truth, shared by the science benchmarks.

Not a benchmark itself: :mod:`injection_recovery`, :mod:`peer_properimage` and
:mod:`registration_accuracy` import it. Everything is built from the pure
functions of :mod:`dagster_project.simulation.telescope` and calibrated with
:mod:`dagster_project.science.calibration` exactly as the ``calibrated_image``
asset does (masters of the night, overscan, bias, flat, gain, variance, masks,
L.A.Cosmic), so the pairs carry the realistic nuisances of the simulated
telescope: PSF mismatch (epoch 0 has the best seeing and is the reference),
pointing offsets of 2-20 px and rotations up to 0.4 deg between epochs, a header
WCS wrong by up to 0.8 px, galaxies, cosmic rays, saturated stars with bleed
trails, hot and dead columns, a sky gradient.

Unlike :func:`~dagster_project.simulation.telescope.simulate_science_frame`, the
science frame is exposed step by step here so that the truth the benchmarks need
is kept: the noiseless scene (for the ideal S/N of an injection), the cosmic-ray
charge (to classify false positives) and the true WCS (for the true transform).

Injected sources are added to the NEW *calibrated* image (as LSST-style "fakes"):
``data += Poisson(F * P * flat) / flat`` and ``variance += F * P / flat``, with
``P`` the true pixel-integrated Moffat PSF of the new epoch. Their S/N is the
optimal difference-image S/N of ``docs/science_benchmarks.md``:
``s_diff = (s_new**-2 + s_ref**-2)**-0.5``, where ``s_new`` is the optimal
PSF-weighted S/N in the new image (background of sky + stars + galaxies + read
noise, plus the source's own shot noise) and ``s_ref`` the S/N the same flux
would have in the reference (its own PSF and background; the source is not in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.optimize import brentq

from dagster_project.science.calibration import (
    CalibrationResult,
    calibrate_science_frame,
    calibrated_header,
    make_master_bias,
    make_master_flat,
)
from dagster_project.science.images import ImagePlanes
from dagster_project.science.psf_models import moffat_alpha, moffat_stamp
from dagster_project.simulation.telescope import (
    DetectorModel,
    DetectorSpec,
    EpochConditions,
    FieldSpec,
    SkyModel,
    bleed_full_wells,
    cosmic_ray_image,
    draw_epoch_conditions,
    make_detector,
    make_sky_model,
    optimal_snr,
    psf_half_width,
    raw_header,
    read_out,
    render_moffat_sources,
    render_scene,
    simulate_bias_frame,
    simulate_flat_frame,
    wcs_header,
)

BAND = "r"


# --------------------------------------------------------------------------- night and frames


@dataclass
class Night:
    """A detector realisation with the masters of its night (shared by all pairs of a run)."""

    spec: DetectorSpec
    detector: DetectorModel
    master_bias: object
    master_flat: object
    sections: dict


def make_night(size: int, seed: int, *, n_bias: int = 5, n_flats: int = 5) -> Night:
    """Detector of ``size`` x ``size`` px with master bias and flat from simulated calibration frames."""
    spec = DetectorSpec(nx=size, ny=size)
    detector = make_detector(spec, np.random.default_rng([seed, 0]))
    bias = [simulate_bias_frame(detector, np.random.default_rng([seed, 1, i]), mjd=61000.0, band=BAND).data
            for i in range(n_bias)]
    flats = []
    for i in range(n_flats):
        rng = np.random.default_rng([seed, 2, i])
        flats.append(simulate_flat_frame(detector, rng, mjd=61000.1, band=BAND,
                                         level_adu=rng.uniform(15000.0, 25000.0)).data)
    sections = {"biassec": spec.biassec, "trimsec": spec.trimsec}
    master_bias = make_master_bias(bias, **sections)
    master_flat = make_master_flat(flats, master_bias=master_bias, **sections)
    return Night(spec, detector, master_bias, master_flat, sections)


@dataclass
class SimulatedFrame:
    """A calibrated science frame and its truth.

    Attributes
    ----------
    planes : ImagePlanes
        Calibrated data (e-), variance, mask and header (header WCS with its error).
    conditions : EpochConditions
    true_wcs : WCS
        The WCS the scene was rendered with.
    scene : ndarray, float32
        Noiseless pre-flat electrons per pixel (sky + stars + galaxies).
    cosmic_xy : ndarray, shape (n, 2)
        0-based (x, y) of pixels that received cosmic-ray charge; ``cosmic_e`` their charge.
    calibration : CalibrationResult stats
    """

    planes: ImagePlanes
    conditions: EpochConditions
    true_wcs: WCS
    scene: np.ndarray = field(repr=False)
    cosmic_xy: np.ndarray = field(repr=False)
    cosmic_e: np.ndarray = field(repr=False)
    calibration: dict = field(default_factory=dict, repr=False)


def true_header(field_spec: FieldSpec, spec: DetectorSpec, conditions: EpochConditions, scale: float = 1.0) -> fits.Header:
    """The frame's true TAN WCS; ``scale`` multiplies the CD matrix (a plate-scale change)."""
    header = wcs_header(field_spec, spec, conditions.offset_px, conditions.rotation_deg)
    for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        header[key] = header[key] * scale
    return header


def simulate_frame(
    night: Night,
    field_spec: FieldSpec,
    sky: SkyModel,
    conditions: EpochConditions,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
    calibrate: bool = True,
) -> SimulatedFrame:
    """Render, expose, read out and calibrate one science frame (``simulate_science_frame`` step by step)."""
    spec, detector = night.spec, night.detector
    truth_hdr = true_header(field_spec, spec, conditions, scale)
    true_wcs = WCS(truth_hdr)
    scene = render_scene(sky, true_wcs, spec.data_shape, conditions, BAND)
    electrons = rng.poisson(scene * detector.flat).astype(np.float64)
    n_hits = rng.poisson(spec.cosmic_ray_rate * electrons.size / 1e6 * conditions.exptime)
    cosmic = cosmic_ray_image(electrons.shape, n_hits, rng)
    electrons += cosmic
    bleed_full_wells(electrons, spec.full_well_e)
    header = raw_header(spec, imagetyp="object", object_name=field_spec.name, band=BAND, mjd=conditions.mjd,
                        exptime=conditions.exptime, airmass=conditions.airmass)
    written = true_header(field_spec, spec, conditions, scale)
    written["CRPIX1"] += conditions.wcs_error_px[0]
    written["CRPIX2"] += conditions.wcs_error_px[1]
    header.update(written)
    raw = read_out(detector, electrons, rng)
    cy, cx = np.nonzero(cosmic)
    cosmic_xy = np.column_stack([cx, cy]).astype(float)
    cosmic_e = cosmic[cy, cx]
    del electrons, cosmic
    if not calibrate:
        return SimulatedFrame(None, conditions, true_wcs, scene.astype(np.float32), cosmic_xy, cosmic_e)
    result: CalibrationResult = calibrate_science_frame(
        raw, gain=header["GAIN"], read_noise_e=header["RDNOISE"], saturate_adu=header["SATURATE"],
        master_bias=night.master_bias, master_flat=night.master_flat, **night.sections)
    planes = result.planes
    planes = ImagePlanes(planes.data, planes.variance, planes.mask, calibrated_header(header, result))
    return SimulatedFrame(planes, conditions, true_wcs, scene.astype(np.float32), cosmic_xy, cosmic_e,
                          dict(result.stats))


@dataclass
class Pair:
    """A reference (epoch 0, best seeing) and a new epoch of one field, both calibrated.

    ``more_refs`` are further exposures of the reference epoch (``make_pair(reference_frames=K)``):
    the frames a co-added reference is built from, with ``ref`` among them (``refs``)."""

    index: int
    field: FieldSpec
    sky: SkyModel
    ref: SimulatedFrame
    new: SimulatedFrame
    more_refs: tuple[SimulatedFrame, ...] = ()

    @property
    def refs(self) -> list[SimulatedFrame]:
        return [self.ref, *self.more_refs]

    def ref_to_new(self, x, y):
        """True map of reference pixels to new pixels (through the true WCSs)."""
        return self.new.true_wcs.world_to_pixel_values(*self.ref.true_wcs.pixel_to_world_values(x, y))

    def new_to_ref(self, x, y, ref: SimulatedFrame | None = None):
        """True map of new pixels to the pixels of ``ref`` (default: the reference)."""
        ref = self.ref if ref is None else ref
        return ref.true_wcs.world_to_pixel_values(*self.new.true_wcs.pixel_to_world_values(x, y))


def make_pair(night: Night, index: int, seed: int, reference_frames: int = 1) -> Pair:
    """Pair ``index`` of a run: its own field and sky, epochs drawn as the simulator draws a night.

    The first ``reference_frames`` epochs are exposures of the reference epoch (the first has the best
    seeing), the last one is the new epoch; with one reference frame the pair is what it always was."""
    field_rng = np.random.default_rng([seed, 10, index])
    field_spec = FieldSpec(f"B{index:03d}", float(field_rng.uniform(0, 360)), float(field_rng.uniform(-60, 10)))
    sky = make_sky_model(field_spec, night.spec, np.random.default_rng([seed, 11, index]))
    mjds = [61000.2 + 0.05 * k for k in range(reference_frames + 1)]
    conditions = draw_epoch_conditions(mjds, night.spec, np.random.default_rng([seed, 12, index]), band=BAND)
    refs = [simulate_frame(night, field_spec, sky, conditions[k], np.random.default_rng([seed, 13, index, k]))
            for k in range(reference_frames)]
    new = simulate_frame(night, field_spec, sky, conditions[reference_frames],
                         np.random.default_rng([seed, 13, index, reference_frames]))
    return Pair(index, field_spec, sky, refs[0], new, tuple(refs[1:]))


# --------------------------------------------------------------------------- injections


@dataclass
class Injections:
    """Point sources injected into the new image of a pair (0-based new-grid positions)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray  # e- (pre-flat), i.e. what PSF photometry on the calibrated image measures
    s_new: np.ndarray
    s_ref: np.ndarray
    s_diff: np.ndarray

    def __len__(self):
        return self.x.size


def draw_target_snr(n: int, rng: np.random.Generator, low: float = 3.0, high: float = 50.0,
                    knee: float = 10.0, dense_fraction: float = 0.7) -> np.ndarray:
    """Target S/N values: ``dense_fraction`` uniform in [low, knee] (the transition), the rest log-uniform to ``high``."""
    dense = rng.uniform(0, 1, n) < dense_fraction
    out = np.exp(rng.uniform(np.log(knee), np.log(high), n))
    out[dense] = rng.uniform(low, knee, int(dense.sum()))
    return out


def _snr_functions(pair: Pair, night: Night, x: float, y: float):
    """(s_new(F), s_ref(F)) for a point source at new-grid (x, y); None if a window leaves a frame.

    With several reference frames, ``s_ref`` is that of their optimal co-add: their S/N^2 add up."""
    spec = night.spec
    flat = night.detector.flat
    rn = spec.read_noise_e
    out, ref_units = [], []
    frames = [(pair.new, (x, y), True)] + [(ref, pair.new_to_ref(x, y, ref), False) for ref in pair.refs]
    for frame, (fx, fy), own_noise in frames:
        fx, fy = float(fx), float(fy)
        half = psf_half_width(frame.conditions.seeing_fwhm_px)
        cx, cy = int(round(fx)), int(round(fy))
        if cx - half < 0 or cy - half < 0 or cx + half >= spec.nx or cy + half >= spec.ny:
            return None
        psf = moffat_stamp(2 * half + 1, offset=(fx - cx, fy - cy), **frame.conditions.psf)
        window = np.s_[cy - half: cy + half + 1, cx - half: cx + half + 1]
        response = flat[window]
        background = frame.scene[window].astype(np.float64) * response
        if own_noise:
            out.append(lambda F, p=psf, b=background, r=response: optimal_snr(F, p, b, rn, r))
        else:
            ref_units.append(float(np.sum((psf * response) ** 2 / (background + rn**2))))
    unit = float(np.sqrt(np.sum(ref_units)))
    out.append(lambda F, u=unit: F * u)
    return out


def inject(pair: Pair, night: Night, rng: np.random.Generator, *, spacing: int = 80, margin: int = 48,
           snr_low: float = 3.0, snr_high: float = 50.0) -> tuple[ImagePlanes, Injections]:
    """Inject point sources on a jittered grid into the new calibrated image of ``pair``.

    One source per ``spacing`` x ``spacing`` cell of a grid with a random origin
    (jittered by up to a quarter cell, random sub-pixel phase), so sources are
    at least ``spacing / 2`` apart; at least ``margin - spacing / 4`` px inside
    the new frame and with their PSF window inside the reference too. Target ``s_diff`` values
    come from :func:`draw_target_snr`; the flux that reaches it is solved for.
    Returns the new ImagePlanes (copies) and the truth.
    """
    ny, nx = night.spec.data_shape
    # a random origin per frame makes the positions uniform over the detector on average (no grid column
    # sits systematically on a detector defect); cells stay ``spacing`` apart
    origin = rng.uniform(0, spacing, 2)
    cx = np.arange(margin + origin[0], nx - margin, spacing)
    cy = np.arange(margin + origin[1], ny - margin, spacing)
    gx, gy = np.meshgrid(cx, cy)
    jitter = spacing / 4
    x = gx.ravel() + rng.uniform(-jitter, jitter, gx.size)
    y = gy.ravel() + rng.uniform(-jitter, jitter, gy.size)
    target = draw_target_snr(x.size, rng, snr_low, snr_high)
    rows = []
    for xi, yi, ti in zip(x, y, target):
        funcs = _snr_functions(pair, night, xi, yi)
        if funcs is None:
            continue
        s_new, s_ref = funcs

        def s_diff(F):
            a, b = s_new(F), s_ref(F)
            return (a**-2 + b**-2) ** -0.5 if a > 0 and b > 0 else 0.0

        high = 100.0
        while s_diff(high) < ti:
            high *= 4.0
        F = brentq(lambda f: s_diff(f) - ti, 1e-6, high, rtol=1e-8)
        rows.append((xi, yi, F, s_new(F), s_ref(F), s_diff(F)))
    truth = Injections(*(np.array(c) for c in zip(*rows)))
    cond = pair.new.conditions
    expected = render_moffat_sources(night.spec.data_shape, truth.x, truth.y, truth.flux, **cond.psf)
    flat = night.detector.flat
    detected = rng.poisson(expected * flat)
    planes = pair.new.planes
    with np.errstate(divide="ignore", invalid="ignore"):
        add = np.where(flat > 0, detected / flat, 0.0).astype(np.float32)
        add_var = np.where(flat > 0, expected / flat, 0.0).astype(np.float32)
    injected = ImagePlanes(planes.data + add, planes.variance + add_var, planes.mask.copy(), planes.header.copy())
    return injected, truth


# --------------------------------------------------------------------------- truth catalogues on the new grid


@dataclass
class TruthCatalogue:
    """Stars and galaxies of the field on the new grid, for classifying false positives."""

    star_xy: np.ndarray
    star_flux: np.ndarray
    star_radius: np.ndarray  # px within which a residual counts as "near this star"
    galaxy_xy: np.ndarray
    galaxy_radius: np.ndarray


def truth_catalogue(pair: Pair, night: Night, *, peak_sigma: float = 1.0) -> TruthCatalogue:
    """Stars whose peak exceeds ``peak_sigma`` sky sigma (1: optimal S/N >~ 2.5), with the radius where their
    profile falls to 1 sky sigma.

    The radius is at least 1.5 FWHM (largest of the two epochs); galaxies get
    ``2 r_eff + 1.5 FWHM``.
    """
    cond_n, cond_r = pair.new.conditions, pair.ref.conditions
    star_rate, gal_rate = pair.sky.rates(BAND)
    x, y = pair.new.true_wcs.world_to_pixel_values(pair.sky.star_ra, pair.sky.star_dec)
    flux = star_rate * cond_n.exptime
    fwhm = max(cond_n.seeing_fwhm_px, cond_r.seeing_fwhm_px)
    beta = min(cond_n.moffat_beta, cond_r.moffat_beta)
    alpha = moffat_alpha(fwhm, beta)
    sigma = np.sqrt(max(cond_n.sky_e, cond_r.sky_e) + night.spec.read_noise_e**2)
    peak = flux * (beta - 1) / (np.pi * alpha**2)
    ratio = np.maximum(peak / sigma, 1.0)
    radius = np.maximum(alpha * np.sqrt(np.maximum(ratio ** (1 / beta) - 1, 0)), 1.5 * fwhm)
    keep = (peak >= peak_sigma * sigma) & (x > -radius) & (y > -radius) & (x < night.spec.nx + radius) \
        & (y < night.spec.ny + radius)
    gx, gy = pair.new.true_wcs.world_to_pixel_values(pair.sky.galaxy_ra, pair.sky.galaxy_dec)
    r_eff_px = pair.sky.galaxy_r_eff_arcsec / night.spec.pixel_scale
    return TruthCatalogue(
        star_xy=np.column_stack([x[keep], y[keep]]), star_flux=flux[keep], star_radius=radius[keep],
        galaxy_xy=np.column_stack([gx, gy]), galaxy_radius=2 * r_eff_px + 1.5 * fwhm,
    )


def cosmic_rays_on_new_grid(pair: Pair, min_charge_e: float = 100.0) -> np.ndarray:
    """(x, y) on the new grid of cosmic-ray pixels of both epochs with at least ``min_charge_e``."""
    new_xy = pair.new.cosmic_xy[pair.new.cosmic_e >= min_charge_e]
    ref_xy = pair.ref.cosmic_xy[pair.ref.cosmic_e >= min_charge_e]
    if len(ref_xy):
        rx, ry = pair.ref_to_new(ref_xy[:, 0], ref_xy[:, 1])
        ref_xy = np.column_stack([rx, ry])
    return np.concatenate([new_xy.reshape(-1, 2), ref_xy.reshape(-1, 2)])
