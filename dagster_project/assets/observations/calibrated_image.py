"""calibrated_image: overscan, bias and flat, ADU to electrons, variance and mask planes, PSF and seeing.

The raw header is read as ingest interpreted it through the instrument profile
(``ingest/frames.py``: standard keywords, a nominal WCS for a frame without one). A frame
without a WCS gets one solved against another calibrated frame of its field
(``calibration/astrometry.py``), or is blocked (``no WCS: ...``). A night without calibration
frames borrows another night's masters (``calibration/masters.py``, with a note); without
any masters the frame is blocked, or, when the user chose so (``ASTRO_ALLOW_UNCALIBRATED=1``),
processed without them and recorded as uncalibrated (``PreprocessRun.calibration_applied``
false, the note and the metadata's ``calibration`` say what was left out).
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from dagster import AssetCheckResult, Failure

from dagster_project.calibration import astrometry as frame_astrometry
from dagster_project.calibration.masters import MastersChoice, masters_for
from dagster_project.catalog import queries
from dagster_project.catalog.schema import RunStatus
from dagster_project.ingest.frames import standard_cards
from dagster_project.pipeline import PartitionOutput, Stopwatch, artifacts, inputs, observation_asset, png_markdown
from dagster_project.pipeline import rounded, size_mb
from dagster_project.rendering.preview import image_preview_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.astrometry import WcsSolution
from dagster_project.science.calibration import CalibrationResult, calibrate_science_frame, calibrated_header
from dagster_project.science.images import ImagePlanes
from dagster_project.science.psf import ImageQuality, characterize_image, pixel_scale_arcsec
from dagster_project.store import ProductStore


@dataclass(frozen=True)
class _Frame:
    """What a calibration reads of the catalog, in the transaction that starts its PreprocessRun."""

    run_id: int
    raw_path: Path
    raw_cards: dict
    output: Path
    masters: MastersChoice
    anchors: list[frame_astrometry.Anchor] | None  # None: the frame has a WCS; []: it needs one and has no anchor
    no_anchor: str | None


@dataclass(frozen=True)
class _Calibrated:
    planes: ImagePlanes
    quality: ImageQuality
    result: CalibrationResult
    solution: WcsSolution | None
    anchor: frame_astrometry.Anchor | None


def _calibrate(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
               pipeline: PipelineConfigResource) -> PartitionOutput:
    products = store.store()
    watch = Stopwatch()
    frame = _start(key, run_id, catalog, products, pipeline, watch)
    notes = list(frame.masters.notes)  # _process adds to them
    try:
        done = _process(frame, products, pipeline, watch, notes)
    except (_Blocked, frame_astrometry.NoWcs) as blocked:
        _finish(catalog, frame.run_id, RunStatus.BLOCKED, error_message=str(blocked),
                calibration_note="; ".join(notes) or None)
        raise Failure(f"calibration blocked: {blocked}", allow_retries=False) from None
    except Exception as exc:
        _finish(catalog, frame.run_id, RunStatus.FAILED, error_message=f"{type(exc).__name__}: {exc}")
        raise
    return _record(key, frame, done, notes, watch, catalog, products, pipeline)


def _start(key: str, dagster_run_id: str, catalog: CatalogResource, products: ProductStore,
           pipeline: PipelineConfigResource, watch: Stopwatch) -> _Frame:
    parameters = {"detect_cosmic_rays": pipeline.detect_cosmic_rays, "allow_uncalibrated": pipeline.allow_uncalibrated}
    anchors = no_anchor = None
    with catalog.catalog().session() as session:
        observation = queries.get_observation(session, key)
        raw = observation.raw_file
        run = queries.start_preprocess_run(session, observation, parameters=parameters, dagster_run_id=dagster_run_id)
        night, band, instrument = observation.night, observation.filter_band, observation.instrument or raw.instrument
        raw_cards = dict(raw.header or {})
        with watch.step("masters"):
            masters = masters_for(session, products, instrument=instrument, night=night, band=band)
        if frame_astrometry.needs_solving(raw_cards):
            anchors = frame_astrometry.anchors_for(session, observation)
            no_anchor = frame_astrometry.no_anchor_reason(observation)
        return _Frame(run_id=run.id, raw_path=Path(raw.stored_path), raw_cards=raw_cards,
                      output=products.calibrated_path(night, observation.observation_id),
                      masters=masters, anchors=anchors, no_anchor=no_anchor)


def _process(frame: _Frame, products: ProductStore, pipeline: PipelineConfigResource, watch: Stopwatch,
             notes: list[str]) -> _Calibrated:
    """Calibrate, characterize, solve the WCS where needed, write; raises _Blocked or NoWcs when it cannot."""
    masters = frame.masters
    notes += _masters_or_block(masters, pipeline.allow_uncalibrated)
    if frame.anchors == []:
        raise _Blocked(frame.no_anchor)
    with watch.step("read"):
        with fits.open(frame.raw_path, memmap=False) as hdul:
            raw_adu = hdul[0].data.astype(np.float32)
            raw_header = _as_ingested(hdul[0].header, frame.raw_cards)
    with watch.step("calibrate"):
        result = calibrate_science_frame(
            raw_adu, gain=float(raw_header["GAIN"]), read_noise_e=float(raw_header["RDNOISE"]),
            saturate_adu=float(raw_header["SATURATE"]), master_bias=masters.bias and masters.bias.frame,
            master_flat=masters.flat and masters.flat.frame, biassec=raw_header.get("BIASSEC"),
            trimsec=raw_header.get("TRIMSEC"), detect_cosmic_rays=pipeline.detect_cosmic_rays)
        header = calibrated_header(raw_header, result)
        planes = ImagePlanes(result.planes.data, result.planes.variance, result.planes.mask, header)
    with watch.step("characterize"):
        quality = characterize_image(planes)
    solution = anchor = None
    if frame.anchors is not None:
        with watch.step("astrometry"):
            solution, anchor = frame_astrometry.solve(products, planes, quality, frame.anchors)
        header = frame_astrometry.with_solution(header, solution, anchor)
        planes = ImagePlanes(planes.data, planes.variance, planes.mask, header)
        scale = pixel_scale_arcsec(planes.wcs)
        quality = dataclasses.replace(quality, pixel_scale_arcsec=scale, seeing_arcsec=quality.psf.fwhm_px * scale)
        notes.append(f"WCS solved against {anchor.observation_key} ({solution.registration.n_matched} stars, "
                     f"rms {solution.registration.rms:.3f} px, {solution.registration.method} match)")
    with watch.step("write"):
        products.write_planes(frame.output, planes)
    return _Calibrated(planes=planes, quality=quality, result=result, solution=solution, anchor=anchor)


def _record(key: str, frame: _Frame, done: _Calibrated, notes: list[str], watch: Stopwatch, catalog: CatalogResource,
            products: ProductStore, pipeline: PipelineConfigResource) -> PartitionOutput:
    """The completed PreprocessRun, the observation's seeing (and solved position), and what the UI shows."""
    planes, quality, solution, anchor, masters = done.planes, done.quality, done.solution, done.anchor, frame.masters
    seeing = quality.seeing_arcsec if np.isfinite(quality.seeing_arcsec) else None
    figures = rounded({
        "fwhm_px": quality.psf.fwhm_px, "seeing_arcsec": seeing, "ellipticity": quality.psf.ellipticity,
        "sky_e": float(np.median(quality.background.background)), "sky_rms_e": quality.background.median_rms,
        "n_psf_stars": quality.psf.n_stars, "n_stars": quality.n_stars, "depth_5sigma_e": quality.depth_5sigma_e,
        "masked_fraction": float((planes.mask != 0).mean()),
        **{k: v for k, v in done.result.stats.items() if isinstance(v, (int, float))},
    })
    wcs_ok = planes.wcs.has_celestial
    good = (planes.mask == 0)
    finite = bool(np.isfinite(planes.data[good]).all() and np.isfinite(planes.variance[good]).all())
    header = planes.header
    wcs_info = {k: header[k] for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2") if k in header}
    wcs_info.update(_wcs_provenance(solution, anchor))
    _finish(catalog, frame.run_id, RunStatus.COMPLETED, processed_fits_path=str(frame.output),
            calibration_applied=masters.blocked_reason is None, wcs_aligned=wcs_ok, quality=figures,
            processing_time_seconds=watch.total, master_bias_id=masters.bias and masters.bias.master_id,
            master_flat_id=masters.flat and masters.flat.master_id, calibration_note="; ".join(notes) or None,
            registration_quality=solution.registration.rms if solution else None, wcs_info=wcs_info)
    with catalog.catalog().session() as session:
        queries.record_seeing(session, key, seeing)
        if solution is not None:
            frame_astrometry.record_position(session, key, solution, planes.shape)
        queries.observation_materialized(session, key, pipeline.rebuild_policy())
    preview = image_preview_png(planes.data, mask=planes.mask, max_size=256)
    preview_path = products.write_bytes(frame.output.with_name("calibrated.png"), preview)
    return PartitionOutput(
        metadata={
            **artifacts(calibrated_image=frame.output, calibrated_preview=preview_path),
            "size_mb": size_mb(frame.output),
            **inputs(raw_frame=frame.raw_path, master_bias=masters.bias and masters.bias.path,
                     master_flat=masters.flat and masters.flat.path, wcs_anchor=anchor and anchor.path),
            **figures, **watch.as_metadata(),
            "master_bias_night": masters.bias.night if masters.bias else "none",
            "master_flat_night": masters.flat.night if masters.flat else "none",
            "calibration": _calibration_summary(masters),
            "calibration_note": "; ".join(notes) or "masters of the same night",
            "wcs_source": wcs_info["source"],
            **({"wcs_anchor": anchor.observation_key, "wcs_solution_rms_px": round(solution.registration.rms, 4),
                "wcs_solution_n_stars": solution.registration.n_matched} if solution else {}),
            "preview": png_markdown(preview, "calibrated (e-)"),
        },
        checks=[AssetCheckResult(check_name="finite_with_wcs", passed=finite and wcs_ok,
                                 metadata={"finite_unmasked": finite, "celestial_wcs": wcs_ok})],
    )


def _masters_or_block(masters: MastersChoice, allow_uncalibrated: bool) -> list[str]:
    """Nothing to add when both masters were found; without them, blocked, or the user's choice noted."""
    reason = masters.blocked_reason
    if reason is None:
        return []
    if not allow_uncalibrated:
        raise _Blocked(f"{reason} (ASTRO_ALLOW_UNCALIBRATED=1 processes such frames without, recorded as uncalibrated)")
    missing = " and ".join(k for k, m in (("bias", masters.bias), ("flat", masters.flat)) if m is None)
    return [f"uncalibrated by the user's choice (ASTRO_ALLOW_UNCALIBRATED=1): {reason}; no {missing} applied"]


def _calibration_summary(masters: MastersChoice) -> str:
    if masters.blocked_reason is None:
        return "bias and flat"
    applied = [k for k, m in (("bias", masters.bias), ("flat", masters.flat)) if m is not None]
    return f"uncalibrated (user's choice): {' '.join(applied) + ' only' if applied else 'overscan and gain only'}"


def _as_ingested(header: fits.Header, raw_cards: dict) -> fits.Header:
    """The raw header with the standard keywords as ingest read them through the instrument profile, and the
    nominal WCS built from the pointing for a frame without one."""
    header = header.copy()
    profile = raw_cards.get("profile") or {}
    for key, value in standard_cards(raw_cards).items():
        raw_value = header.get(key)
        if value is None:
            header.remove(key, ignore_missing=True, remove_all=True)
        else:
            header[key] = value
        header.add_history(f"{key} = {value!r}, read from {raw_value!r} by instrument profile {profile.get('name')}")
    if profile.get("nominal_wcs"):
        header.update(profile["nominal_wcs"])
        header.add_history("WCS: nominal, from the pointing and the profile's pixel scale (to be solved)")
    return header


def _wcs_provenance(solution, anchor) -> dict:
    if solution is None:
        return {"source": "header"}
    return {"source": "solved", "anchor": anchor.observation_key, "rms_px": round(solution.registration.rms, 4),
            "n_stars": solution.registration.n_matched, "method": solution.registration.method,
            "pixel_scale_arcsec": round(solution.pixel_scale_arcsec, 5)}


class _Blocked(Exception):
    """Calibration cannot start (e.g. no master bias or flat anywhere)."""


def _finish(catalog: CatalogResource, run_id, status: RunStatus, **fields) -> None:
    with catalog.catalog().session() as session:
        queries.finish_preprocess_run(session, queries.get_preprocess_run(session, run_id), status=status, **fields)


calibrated_image = observation_asset(
    "calibrated_image", _calibrate, deps=["raw_observation"], kinds={"fits"}, blocking_checks=True,
    checks={"finite_with_wcs": "Unmasked pixels and variances are finite and the header has a celestial WCS."},
    description="Raw frame calibrated with the night's master bias and flat: SCI (e-), VAR (e-^2), MASK.",
)
