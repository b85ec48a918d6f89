"""Artifacts of the simulated telescope, the bogus detections real/bogus scoring must learn (no I/O).

The telescope of :mod:`~dagster_project.simulation.telescope` already produces,
in every science frame and with no option:

* cosmic rays (:func:`~.telescope.cosmic_ray_image`: ``cosmic_ray_rate`` hits
  per Mpix per s, ~300 in a 2048x2048 frame of 60 s);
* saturation bleeds (:func:`~.telescope.bleed_full_wells`: the 3-5 stars a
  frame that fill a full well spill along their columns);
* fixed hot and dead columns (``DetectorSpec.n_hot_columns``/``n_dead_columns``),
  the same in every exposure, so the master bias and flat remove them before
  the difference.

:class:`ArtifactRates` adds, on demand, what those do not give (all off by
default, and then no random number is drawn for them):

* **satellite and airplane trails** (:class:`Trail`): a straight line across
  the frame with a Gaussian cross-profile of the seeing's FWHM, a peak surface
  brightness log-uniform from a few sigma of the sky noise per pixel to very
  bright, some with a periodic glint (tumbling or strobing objects);
* **flickering columns** (:class:`FlickerColumn`): a column, or the part of
  one read out through a leaky defect, with extra charge in one exposure only,
  which no master bias removes;
* **hot pixels that vary** (:class:`HotPixels`): single pixels with dark
  charge in one exposure only (random telegraph pixels);
* **bright stars with an odd PSF** (:class:`OddPsfs`): optics aberrations and
  tracking jitter that vary across the field give some bright stars a more
  elliptical, shifted core than the frame's PSF: residuals in the difference;
* **local astrometric distortion** (:class:`Distortion`): a smooth sub-pixel
  Gaussian bump of the focal plane that the header WCS and an affine
  registration do not describe: dipoles in the difference;
* **optical ghosts** (:class:`Ghost`): a faint defocused disc of every very
  bright star, reflected through the optical axis (the frame centre), which
  moves against the star when the pointing changes.

Every artifact written becomes an :class:`Artifact` row (kind and geometry in
0-based pixels of the trimmed data section, the true WCS's RA/Dec of its two
points), so a benchmark can tell an artifact's candidates from real transients.

=================  ==================================  ==================  =================================
kind               (x0, y0) -> (x1, y1)                width_px            amplitude
=================  ==================================  ==================  =================================
``trail``          where the line enters/leaves        FWHM of the         peak surface brightness on the
                   the data section                    cross-profile       centre line (e-/px, before flat)
``flicker_column`` (x, first row) -> (x, last row)     1                   extra charge (e-/px)
``hot_pixel``      the pixel, twice                    1                   extra charge (e-)
``psf_mismatch``   star position -> rendered centre    --                  star flux (e-)
``distortion``     centre -> centre + displacement     Gaussian sigma      displacement at the centre (px)
``ghost``          star position -> ghost centre       disc diameter       surface brightness (e-/px)
``cosmic_ray``     track start -> track end            --                  deposited charge (e-)
``saturation``     corners of a full-well region       --                  full well (e-)
``hot_column``     (x, 0) -> (x, ny - 1)               1                   bias excess (ADU, fixed)
``dead_column``    (x, 0) -> (x, ny - 1)               1                   response (fixed)
=================  ==================================  ==================  =================================

``detail`` holds the rest as ``key=value`` pairs separated by ``;``
(:func:`parse_detail`): a trail's ``snr_per_px`` and glint (``glint_period_px``,
``glint_phase_px`` from ``(x0, y0)`` along the line, ``glint_fwhm_px``,
``glint_base``), a PSF mismatch's ``ellipticity`` and ``theta_deg``, a
saturated region's ``pixels``.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: FWHM of a Gaussian in units of its sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: The kinds of :class:`Artifact`, new ones first.
ARTIFACT_KINDS = (
    "trail", "flicker_column", "hot_pixel", "psf_mismatch", "distortion", "ghost",
    "cosmic_ray", "saturation", "hot_column", "dead_column",
)


def _check_range(name: str, value: tuple[float, float]) -> None:
    if not 0 < value[0] <= value[1]:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {value}")


@dataclass(frozen=True)
class ArtifactRates:
    """Which artifacts to add to a science frame, and how often (defaults: none).

    Attributes
    ----------
    trails_per_frame : float
        Poisson mean of satellite/airplane trails per frame.
    trail_snr_range : (float, float)
        Peak surface brightness in units of the sky noise per pixel
        ``sqrt(sky_e + read_noise**2)``, log-uniform.
    trail_glint_fraction : float
        Fraction of trails that flash periodically.
    trail_glint_period_px : (float, float)
        Flash period along the trail (px), log-uniform.
    flicker_columns_per_frame : float
        Poisson mean of columns with extra charge in one exposure; half of them
        from a random row to the far end of the column (away from the serial
        register at row 0: the packets read out through a leaky defect).
    flicker_column_e : (float, float)
        Extra charge per pixel (e-), log-uniform.
    hot_pixels_per_mpix : float
        Poisson mean of hot pixels (one exposure only) per megapixel.
    hot_pixel_e : (float, float)
        Their extra charge (e-), log-uniform.
    psf_mismatch_fraction : float
        Fraction of the stars of at least ``psf_mismatch_min_flux_e`` rendered
        with their own PSF.
    psf_mismatch_min_flux_e : float
        Flux (e-, before flat) above which a star may get an odd PSF.
    psf_mismatch_ellipticity : float
        Largest ellipticity added to the frame's (30-100 % of it is drawn).
    psf_mismatch_shift_px : float
        Largest shift of the odd star's centre (uniform in length).
    distortions_per_frame : float
        Poisson mean of local distortions per frame.
    distortion_shift_px : float
        Largest displacement at a distortion's centre (30-100 % of it is drawn).
    distortion_scale_px : float
        Typical Gaussian sigma of a distortion (50-150 % of it is drawn).
    ghost_fraction : float
        Flux of a ghost relative to its star (0: no ghosts).
    ghost_min_flux_e : float
        Stars of at least this flux (e-) make a ghost.
    ghost_radius_px : float
        Radius of the ghost's disc.
    """

    trails_per_frame: float = 0.0
    trail_snr_range: tuple[float, float] = (2.0, 1000.0)
    trail_glint_fraction: float = 0.25
    trail_glint_period_px: tuple[float, float] = (30.0, 600.0)
    flicker_columns_per_frame: float = 0.0
    flicker_column_e: tuple[float, float] = (20.0, 300.0)
    hot_pixels_per_mpix: float = 0.0
    hot_pixel_e: tuple[float, float] = (200.0, 20000.0)
    psf_mismatch_fraction: float = 0.0
    psf_mismatch_min_flux_e: float = 1e5
    psf_mismatch_ellipticity: float = 0.15
    psf_mismatch_shift_px: float = 0.3
    distortions_per_frame: float = 0.0
    distortion_shift_px: float = 0.5
    distortion_scale_px: float = 150.0
    ghost_fraction: float = 0.0
    ghost_min_flux_e: float = 1e6
    ghost_radius_px: float = 20.0

    def __post_init__(self):
        rates = (self.trails_per_frame, self.flicker_columns_per_frame, self.hot_pixels_per_mpix,
                 self.distortions_per_frame, self.ghost_fraction, self.psf_mismatch_ellipticity,
                 self.psf_mismatch_shift_px, self.distortion_shift_px)
        if min(rates) < 0:
            raise ValueError("artifact rates and sizes must be >= 0")
        if not (0 <= self.trail_glint_fraction <= 1 and 0 <= self.psf_mismatch_fraction <= 1):
            raise ValueError("trail_glint_fraction and psf_mismatch_fraction must be in [0, 1]")
        if min(self.psf_mismatch_min_flux_e, self.ghost_min_flux_e, self.ghost_radius_px,
               self.distortion_scale_px) <= 0:
            raise ValueError("flux thresholds, ghost radius and distortion scale must be > 0")
        for name in ("trail_snr_range", "trail_glint_period_px", "flicker_column_e", "hot_pixel_e"):
            _check_range(name, getattr(self, name))


#: An artifact-rich night: a trail in most frames (several a night), a flickering column in
#: every other frame, hot pixels, half the bright stars with an odd PSF, a local distortion
#: in most frames and ghosts of the brightest stars.
ARTIFACT_RICH = ArtifactRates(
    trails_per_frame=1.0,
    flicker_columns_per_frame=0.5,
    hot_pixels_per_mpix=5.0,
    psf_mismatch_fraction=0.5,
    distortions_per_frame=1.0,
    ghost_fraction=2e-3,
)


@dataclass(frozen=True)
class Artifact:
    """Truth of one artifact in one science frame (see the module's table for each kind).

    Attributes
    ----------
    kind : str
        One of :data:`ARTIFACT_KINDS`.
    x0, y0, x1, y1 : float
        Two points of its geometry, 0-based pixels of the trimmed data section.
    width_px, amplitude : float
        Size and strength, by kind.
    detail : str
        More parameters, ``key=value;...`` (:func:`parse_detail`).
    ra0, dec0, ra1, dec1 : float
        The two points through the frame's true WCS (deg), NaN until set.
    """

    kind: str
    x0: float
    y0: float
    x1: float
    y1: float
    width_px: float = 0.0
    amplitude: float = 0.0
    detail: str = ""
    ra0: float = float("nan")
    dec0: float = float("nan")
    ra1: float = float("nan")
    dec1: float = float("nan")


def format_detail(**values: float) -> str:
    """``key=value;...`` with 6 significant digits, in the order given."""
    return ";".join(f"{key}={float(value):.6g}" for key, value in values.items())


def parse_detail(detail: str) -> dict[str, float]:
    """The numbers of an :attr:`Artifact.detail` string by key (empty for ``""``)."""
    return {key: float(value) for key, value in (item.split("=", 1) for item in detail.split(";") if item)}


def with_sky_positions(artifacts: list[Artifact], wcs) -> tuple[Artifact, ...]:
    """``artifacts`` with ``ra0, dec0, ra1, dec1`` from ``wcs`` (the frame's true WCS)."""
    if not artifacts:
        return ()
    points = np.array([(a.x0, a.y0, a.x1, a.y1) for a in artifacts], dtype=float)
    ra0, dec0 = wcs.pixel_to_world_values(points[:, 0], points[:, 1])
    ra1, dec1 = wcs.pixel_to_world_values(points[:, 2], points[:, 3])
    return tuple(
        dataclasses.replace(a, ra0=float(ra0[i]) % 360.0, dec0=float(dec0[i]), ra1=float(ra1[i]) % 360.0,
                            dec1=float(dec1[i]))
        for i, a in enumerate(artifacts)
    )


def _log_uniform(bounds: tuple[float, float], rng: np.random.Generator, n=None):
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), n))


def add_clipped(image: np.ndarray, stamp: np.ndarray, x0: int, y0: int) -> None:
    """Add ``stamp`` with its corner at integer ``(x0, y0)``, the part outside ``image`` dropped."""
    ny, nx = image.shape
    sy, sx = stamp.shape
    ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + sx, nx), min(y0 + sy, ny)
    if ax0 < ax1 and ay0 < ay1:
        image[ay0:ay1, ax0:ax1] += stamp[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]


# --------------------------------------------------------------------------- trails


@dataclass(frozen=True)
class Trail:
    """A satellite or airplane trail crossing the frame.

    Attributes
    ----------
    x0, y0, x1, y1 : float
        Where the line enters and leaves the data section (0-based pixels).
    fwhm_px : float
        FWHM of the Gaussian cross-profile (the frame's seeing).
    peak_e : float
        Surface brightness on the centre line (e-/px before the flat field;
        at a flash's peak for a glinting trail).
    snr_per_px : float
        ``peak_e`` over the sky noise per pixel it was drawn from.
    glint_period_px : float
        Flash period along the line; 0 for a steady trail.
    glint_phase_px, glint_fwhm_px, glint_base : float
        First flash centre from ``(x0, y0)``, flash FWHM along the line, and
        the brightness between flashes relative to ``peak_e``.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    fwhm_px: float
    peak_e: float
    snr_per_px: float
    glint_period_px: float = 0.0
    glint_phase_px: float = 0.0
    glint_fwhm_px: float = 0.0
    glint_base: float = 1.0

    @property
    def direction(self) -> tuple[float, float]:
        """Unit vector from ``(x0, y0)`` to ``(x1, y1)``."""
        length = np.hypot(self.x1 - self.x0, self.y1 - self.y0)
        return (self.x1 - self.x0) / length, (self.y1 - self.y0) / length

    @property
    def sigma_px(self) -> float:
        """Sigma of the pixel-integrated cross-profile.

        Integrating over a pixel convolves the profile with the pixel's
        projection on the normal, of variance 1/12 in every direction.
        """
        return float(np.sqrt((self.fwhm_px / FWHM_PER_SIGMA) ** 2 + 1.0 / 12.0))

    def glint(self, along: np.ndarray) -> np.ndarray:
        """Relative brightness (peak 1) at distances ``along`` the line from ``(x0, y0)``."""
        if not self.glint_period_px:
            return np.ones_like(along)
        period = self.glint_period_px
        offset = np.mod(along - self.glint_phase_px + 0.5 * period, period) - 0.5 * period
        flash = np.exp(-0.5 * (offset * FWHM_PER_SIGMA / self.glint_fwhm_px) ** 2)
        return self.glint_base + (1.0 - self.glint_base) * flash

    def artifact(self) -> Artifact:
        """The truth row of this trail."""
        detail = dict(snr_per_px=self.snr_per_px)
        if self.glint_period_px:
            detail.update(glint_period_px=self.glint_period_px, glint_phase_px=self.glint_phase_px,
                          glint_fwhm_px=self.glint_fwhm_px, glint_base=self.glint_base)
        return Artifact("trail", self.x0, self.y0, self.x1, self.y1, self.fwhm_px, self.peak_e,
                        format_detail(**detail))


def chord(x: float, y: float, angle: float, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Where the line through ``(x, y)`` at ``angle`` (rad from +x) enters and leaves the pixel area of ``shape``."""
    ny, nx = shape
    ux, uy = np.cos(angle), np.sin(angle)
    low, high = -np.inf, np.inf
    for start, step, size in ((x, ux, nx), (y, uy, ny)):
        if abs(step) > 1e-12:  # a line parallel to an axis never leaves through that axis's edges
            t0, t1 = sorted(((-0.5 - start) / step, (size - 0.5 - start) / step))
            low, high = max(low, t0), min(high, t1)
    return x + low * ux, y + low * uy, x + high * ux, y + high * uy


def draw_trails(
    rates: ArtifactRates, shape: tuple[int, int], fwhm_px: float, noise_e: float, rng: np.random.Generator
) -> tuple[Trail, ...]:
    """The trails of one frame: a Poisson number, each through a uniform point at a uniform angle.

    ``noise_e`` is the sky noise per pixel that ``rates.trail_snr_range`` refers to.
    """
    if rates.trails_per_frame == 0:
        return ()
    ny, nx = shape
    trails = []
    for _ in range(rng.poisson(rates.trails_per_frame)):
        x, y = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
        x0, y0, x1, y1 = chord(x, y, rng.uniform(0.0, np.pi), shape)
        snr = float(_log_uniform(rates.trail_snr_range, rng))
        trail = Trail(x0, y0, x1, y1, fwhm_px, snr * noise_e, snr)
        if rng.uniform() < rates.trail_glint_fraction:
            period = float(_log_uniform(rates.trail_glint_period_px, rng))
            trail = dataclasses.replace(
                trail, glint_period_px=period, glint_phase_px=rng.uniform(0.0, period),
                glint_fwhm_px=rng.uniform(0.1, 0.4) * period, glint_base=rng.uniform(0.0, 0.3),
            )
        trails.append(trail)
    return tuple(trails)


def _band_pixels(trail: Trail, shape: tuple[int, int], reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (unique pairs) of the pixels within ``reach`` px of the trail's line.

    Walks the axis the line runs closer to, one step per pixel, so the band
    costs ``n x (2 reach / cos + 1)`` pixels instead of the whole frame.
    """
    ux, uy = trail.direction
    shallow = abs(ux) >= abs(uy)
    (major_size, minor_size), (m0, n0), (um, un) = (
        ((shape[1], shape[0]), (trail.x0, trail.y0), (ux, uy)) if shallow
        else ((shape[0], shape[1]), (trail.y0, trail.x0), (uy, ux))
    )
    major = np.arange(major_size)
    centre = np.rint(n0 + (major - m0) * un / um).astype(int)
    extent = int(np.ceil(reach / abs(um))) + 1  # + 1: the centre pixel is rounded, up to half a pixel off the line
    minor = centre[:, None] + np.arange(-extent, extent + 1)[None, :]
    major = np.broadcast_to(major[:, None], minor.shape)
    inside = (minor >= 0) & (minor < minor_size)
    major, minor = major[inside], minor[inside]
    return (minor, major) if shallow else (major, minor)


def render_trail(image: np.ndarray, trail: Trail) -> None:
    """Add ``trail`` (e-) to ``image`` in place, on its band of pixels only (5 sigma either side)."""
    ux, uy = trail.direction
    sigma = trail.sigma_px
    rows, cols = _band_pixels(trail, image.shape, 5.0 * sigma)
    across = (rows - trail.y0) * ux - (cols - trail.x0) * uy
    near = np.abs(across) <= 5.0 * sigma  # the band's rounded ends reach a little further
    rows, cols, across = rows[near], cols[near], across[near]
    along = (cols - trail.x0) * ux + (rows - trail.y0) * uy
    image[rows, cols] += trail.peak_e * np.exp(-0.5 * (across / sigma) ** 2) * trail.glint(along)


# --------------------------------------------------------------------------- dark charge


@dataclass(frozen=True)
class FlickerColumn:
    """Extra charge ``excess_e`` per pixel in rows ``y_start`` to the top of column ``x``, in one exposure."""

    x: int
    y_start: int
    excess_e: float

    def artifact(self, ny: int) -> Artifact:
        """The truth row of this column in a frame of ``ny`` rows."""
        x = float(self.x)
        return Artifact("flicker_column", x, float(self.y_start), x, ny - 1.0, 1.0, self.excess_e)


@dataclass(frozen=True)
class HotPixels:
    """Pixels ``(x[k], y[k])`` with extra charge ``excess_e[k]`` in one exposure."""

    x: np.ndarray
    y: np.ndarray
    excess_e: np.ndarray

    def artifacts(self) -> list[Artifact]:
        """One truth row per pixel."""
        return [Artifact("hot_pixel", float(x), float(y), float(x), float(y), 1.0, float(e))
                for x, y, e in zip(self.x, self.y, self.excess_e)]


def draw_flicker_columns(
    rates: ArtifactRates, shape: tuple[int, int], rng: np.random.Generator
) -> tuple[FlickerColumn, ...]:
    """The columns with extra charge in this exposure: whole ones, and half of them from a leaky defect up."""
    if rates.flicker_columns_per_frame == 0:
        return ()
    ny, nx = shape
    n = rng.poisson(rates.flicker_columns_per_frame)
    x = rng.integers(0, nx, n)
    start = np.where(rng.uniform(size=n) < 0.5, rng.integers(0, ny, n), 0)
    excess = _log_uniform(rates.flicker_column_e, rng, n)
    return tuple(FlickerColumn(int(x[k]), int(start[k]), float(excess[k])) for k in range(n))


def draw_hot_pixels(rates: ArtifactRates, shape: tuple[int, int], rng: np.random.Generator) -> HotPixels | None:
    """The hot pixels of this exposure, uniform on the frame (None when the rate is 0)."""
    if rates.hot_pixels_per_mpix == 0:
        return None
    ny, nx = shape
    n = rng.poisson(rates.hot_pixels_per_mpix * nx * ny / 1e6)
    return HotPixels(rng.integers(0, nx, n), rng.integers(0, ny, n), _log_uniform(rates.hot_pixel_e, rng, n))


def add_dark_charge(expected_e: np.ndarray, columns: tuple[FlickerColumn, ...], hot: HotPixels | None) -> None:
    """Add the columns' and hot pixels' charge to ``expected_e`` in place (after the flat: it is not light)."""
    for column in columns:
        expected_e[column.y_start :, column.x] += column.excess_e
    if hot is not None:
        np.add.at(expected_e, (hot.y, hot.x), hot.excess_e)


# --------------------------------------------------------------------------- optics and astrometry


@dataclass(frozen=True)
class Distortion:
    """A local warp: positions move by ``(shift_x, shift_y) * exp(-r**2 / (2 scale_px**2))`` around ``(x, y)``."""

    x: float
    y: float
    shift_x: float
    shift_y: float
    scale_px: float

    def artifact(self) -> Artifact:
        """The truth row of this distortion."""
        return Artifact("distortion", self.x, self.y, self.x + self.shift_x, self.y + self.shift_y,
                        self.scale_px, float(np.hypot(self.shift_x, self.shift_y)))


def draw_distortions(rates: ArtifactRates, shape: tuple[int, int], rng: np.random.Generator) -> tuple[Distortion, ...]:
    """The local distortions of one frame: Poisson number, uniform centres and directions."""
    if rates.distortions_per_frame == 0:
        return ()
    ny, nx = shape
    n = rng.poisson(rates.distortions_per_frame)
    x, y = rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    shift = rng.uniform(0.3, 1.0, n) * rates.distortion_shift_px
    angle = rng.uniform(0.0, 2 * np.pi, n)
    scale = rng.uniform(0.5, 1.5, n) * rates.distortion_scale_px
    return tuple(
        Distortion(float(x[k]), float(y[k]), float(shift[k] * np.cos(angle[k])), float(shift[k] * np.sin(angle[k])),
                   float(scale[k]))
        for k in range(n)
    )


def displaced(x, y, distortions: tuple[Distortion, ...]):
    """Positions ``(x, y)`` moved by ``distortions``; the inputs themselves when there are none."""
    if not distortions:
        return x, y
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx, dy = np.zeros_like(x), np.zeros_like(y)
    for d in distortions:
        weight = np.exp(-0.5 * ((x - d.x) ** 2 + (y - d.y) ** 2) / d.scale_px**2)
        dx += d.shift_x * weight
        dy += d.shift_y * weight
    return x + dx, y + dy


@dataclass(frozen=True)
class OddPsfs:
    """Stars (indices into the sky model) rendered with their own PSF: ellipticity, angle and centre shift."""

    index: np.ndarray
    ellipticity: np.ndarray
    theta_deg: np.ndarray
    shift_x: np.ndarray
    shift_y: np.ndarray

    def artifacts(self, x: np.ndarray, y: np.ndarray, flux: np.ndarray, shape: tuple[int, int]) -> list[Artifact]:
        """Truth rows of the odd stars centred on the frame, from all stars' positions and fluxes."""
        ny, nx = shape
        rows = []
        for k, star in enumerate(self.index):
            if -0.5 <= x[star] < nx - 0.5 and -0.5 <= y[star] < ny - 0.5:
                rows.append(Artifact(
                    "psf_mismatch", float(x[star]), float(y[star]), float(x[star] + self.shift_x[k]),
                    float(y[star] + self.shift_y[k]), 0.0, float(flux[star]),
                    format_detail(ellipticity=self.ellipticity[k], theta_deg=self.theta_deg[k]),
                ))
        return rows


def draw_odd_psfs(
    rates: ArtifactRates, star_flux: np.ndarray, base_ellipticity: float, rng: np.random.Generator
) -> OddPsfs | None:
    """Which bright stars get an odd PSF, and which (None when ``psf_mismatch_fraction`` is 0)."""
    if rates.psf_mismatch_fraction == 0 or not star_flux.size:
        return None
    bright = np.flatnonzero(star_flux >= rates.psf_mismatch_min_flux_e)
    chosen = bright[rng.uniform(size=bright.size) < rates.psf_mismatch_fraction]
    n = chosen.size
    ellipticity = np.minimum(base_ellipticity + rng.uniform(0.3, 1.0, n) * rates.psf_mismatch_ellipticity, 0.9)
    theta = rng.uniform(0.0, 180.0, n)
    shift = rng.uniform(0.0, rates.psf_mismatch_shift_px, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    return OddPsfs(chosen, ellipticity, theta, shift * np.cos(angle), shift * np.sin(angle))


@dataclass(frozen=True)
class Ghost:
    """A uniform disc of ``surface_e`` e-/px, ``radius_px`` at ``(x, y)``: ghost of the star at ``star_x, star_y``."""

    star_x: float
    star_y: float
    x: float
    y: float
    radius_px: float
    surface_e: float

    def artifact(self) -> Artifact:
        """The truth row of this ghost."""
        return Artifact("ghost", self.star_x, self.star_y, self.x, self.y, 2 * self.radius_px, self.surface_e)


def find_ghosts(
    rates: ArtifactRates, x: np.ndarray, y: np.ndarray, flux: np.ndarray, shape: tuple[int, int]
) -> tuple[Ghost, ...]:
    """The ghosts on the frame of the stars at ``(x, y)`` of ``flux`` (deterministic: no random number)."""
    if rates.ghost_fraction == 0 or not np.size(flux):
        return ()
    ny, nx = shape
    radius = rates.ghost_radius_px
    # a reflection between two surfaces near focus images a star through the optical axis
    gx, gy = (nx - 1) - np.asarray(x), (ny - 1) - np.asarray(y)
    on = ((np.asarray(flux) >= rates.ghost_min_flux_e) & (gx > -radius) & (gx < nx - 1 + radius)
          & (gy > -radius) & (gy < ny - 1 + radius))
    surface = rates.ghost_fraction * np.asarray(flux) / (np.pi * radius**2)
    return tuple(Ghost(float(x[k]), float(y[k]), float(gx[k]), float(gy[k]), radius, float(surface[k]))
                 for k in np.flatnonzero(on))


def render_ghost(image: np.ndarray, ghost: Ghost) -> None:
    """Add ``ghost`` (a disc with a one-pixel anti-aliased edge) to ``image`` in place, on its stamp only."""
    half = int(np.ceil(ghost.radius_px)) + 1
    cx, cy = int(np.rint(ghost.x)), int(np.rint(ghost.y))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(xx + cx - ghost.x, yy + cy - ghost.y)
    add_clipped(image, ghost.surface_e * np.clip(ghost.radius_px + 0.5 - r, 0.0, 1.0), cx - half, cy - half)


# --------------------------------------------------------------------------- what the detector already does


@dataclass(frozen=True)
class CosmicRays:
    """Tracks of cosmic-ray hits: start, projected length (px), direction (rad), total charge (e-)."""

    x0: np.ndarray
    y0: np.ndarray
    length: np.ndarray
    angle: np.ndarray
    charge: np.ndarray

    def artifacts(self) -> list[Artifact]:
        """One truth row per track."""
        x1, y1 = self.x0 + self.length * np.cos(self.angle), self.y0 + self.length * np.sin(self.angle)
        return [Artifact("cosmic_ray", float(self.x0[k]), float(self.y0[k]), float(x1[k]), float(y1[k]),
                         0.0, float(self.charge[k])) for k in range(self.x0.size)]


def saturation_artifacts(electrons: np.ndarray, full_well_e: float) -> list[Artifact]:
    """One row per connected region at full well (a saturated core and its bleed trail): its bounding box."""
    # the bleed sets pixels to full well by subtraction, which may miss it by a rounding step
    full = electrons >= full_well_e * (1.0 - 1e-9)
    labels, _ = ndimage.label(full)
    rows = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        pixels = int(np.count_nonzero(labels[box] == k))
        y0, x0, y1, x1 = box[0].start, box[1].start, box[0].stop - 1, box[1].stop - 1
        rows.append(Artifact("saturation", float(x0), float(y0), float(x1), float(y1), 0.0, full_well_e,
                             format_detail(pixels=pixels)))
    return rows
