"""End to end with the default references: the proper co-add of a field's good frames, its inputs in the
catalog, each input differenced against the co-add of the others, and the rebuild policy."""

from pathlib import Path

import pytest
from astropy.io import fits
from dagster import AssetKey, instance_for_test
from sqlalchemy import select

from dagster_project.catalog import queries
from dagster_project.catalog.schema import DifferenceRun, ObservationStatus, ReferenceImage, ReferenceInput, RunStatus
from dagster_project.cli.runner import process_folder
from dagster_project.references.policy import rebuilds_due
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coadded(tmp_path_factory):
    """One field, four epochs of 768x768, processed with the default reference settings (co-add of every frame)."""
    night = tmp_path_factory.mktemp("night")
    simulate_night(night, n_fields=1, n_epochs=4, size=768, n_bias=3, n_flats=3, transients_per_frame=6, seed=11)
    root = tmp_path_factory.mktemp("platform")
    with instance_for_test() as instance:
        platform = make_platform(root, f"sqlite:///{root / 'catalog.sqlite'}", instance, reference_max_frames=20)
        report = process_folder(night, platform.settings, wait=True, instance=instance, progress=lambda _: None)
        yield platform, report
        platform.catalog.engine.dispose()


def test_the_reference_is_the_coadd_of_every_good_frame_with_its_inputs_listed(coadded):
    platform, report = coadded
    assert not report.failed, [(r.job_name, r.partition_key) for r in report.failed]
    with platform.catalog.session() as s:
        reference = s.scalars(select(ReferenceImage).where(ReferenceImage.is_current)).one()
        inputs = s.scalars(select(ReferenceInput).where(ReferenceInput.reference_id == reference.id)).all()
        assert (reference.n_inputs, len(inputs)) == (4, 4)
        assert sum(i.weight for i in inputs) == pytest.approx(1.0)
        anchors = [i for i in inputs if i.is_anchor]
        assert len(anchors) == 1 and anchors[0].observation_id == reference.source_observation_id
        assert all(i.registration_rms_px is None if i.is_anchor else i.registration_rms_px < 0.2 for i in inputs)
        assert reference.inputs_digest == queries.inputs_digest(queries.reference_input_keys(s, reference))
        assert reference.mag_system == "instrumental" and reference.limit_mag_5sigma is not None
        assert reference.psf_fwhm_px > 1.0
        with fits.open(reference.path) as hdul:
            assert {"SCI", "VAR", "MASK", "PSF"} <= {h.name for h in hdul}
            assert hdul[0].header["NCOMBINE"] == 4
        assert rebuilds_due(s, platform.resources["pipeline"].reference_policy()) == []  # it holds every frame


def test_no_frame_is_subtracted_from_a_template_that_holds_it(coadded):
    platform, _ = coadded
    with platform.catalog.session() as s:
        runs = s.scalars(select(DifferenceRun)).all()
        assert [r.status for r in runs] == [RunStatus.COMPLETED] * 4
        assert all(r.observation.status is ObservationStatus.DIFFERENCED for r in runs)
        for run in runs:
            assert 0.8 < run.quality["scorr_std"] < 1.25  # a template holding the frame would give ~0.7
            pre = run.observation.preprocess_run
            assert pre.registration_quality == pytest.approx(run.quality["registration_rms_px"], abs=1e-3)
            template = Path(platform.settings.store_dir / "references" / "F001-r" /
                            f"v1-without-{run.observation.observation_id}.fits")
            assert template.exists()
            with fits.open(template) as hdul:
                assert hdul[0].header["NCOMBINE"] == 3
    events = platform.instance.get_latest_materialization_event(AssetKey("reference_image"))
    metadata = events.asset_materialization.metadata
    assert metadata["n_inputs"].value == 4
    assert sum(k.startswith("input_calibrated_image_") for k in metadata) == 4  # provenance names every input
    assert "instrumental" in metadata["limit_mag_system"].value


def test_a_frame_beyond_the_limit_is_differenced_against_the_whole_coadd(tmp_path, coadded):
    platform, _ = coadded
    with instance_for_test() as instance:
        fewer = make_platform(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}", instance, reference_max_frames=2,
                             retry_max_attempts=1)
        night = tmp_path / "night"
        simulate_night(night, n_fields=1, n_epochs=3, size=768, n_bias=3, n_flats=3, transients_per_frame=4, seed=11)
        report = process_folder(night, fewer.settings, wait=True, instance=instance, progress=lambda _: None)
        assert not report.failed
        with fewer.catalog.session() as s:
            reference = s.scalars(select(ReferenceImage).where(ReferenceImage.is_current)).one()
            held = set(queries.reference_input_keys(s, reference))
            assert reference.n_inputs == 2
            for run in s.scalars(select(DifferenceRun)).all():
                assert run.status is RunStatus.COMPLETED
                key = run.observation.observation_id
                template = fewer.settings.store_dir / "references" / "F001-r" / f"v1-without-{key}.fits"
                assert template.exists() == (key in held)
        fewer.catalog.engine.dispose()
