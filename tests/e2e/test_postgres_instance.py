"""The chain with the Dagster instance on PostgreSQL, set up as the README says (deploy/dagster-postgres.yaml
and the DAGSTER_PG_* variables), plus what the runs and the catalog say about themselves along the way."""

import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table
from dagster import AssetKey, DagsterInstance, materialize

from dagster_project.assets.detection.candidates import candidates
from dagster_project.assets.detection.difference_image import difference_image
from dagster_project.assets.references.reference_image import (
    DEPTH_CHECK,
    USABLE_CHECK,
    usable_for_differences,
)
from dagster_project.catalog import queries
from dagster_project.catalog.schema import Candidate, DifferenceRun, Observation, ObservationStatus, RunStatus
from dagster_project.definitions import defs
from dagster_project.cli.runner import process_folder
from dagster_project.science.images import ImagePlanes
from dagster_project.settings import Settings
from dagster_project.simulation.night import simulate_night
from tests.conftest import fresh_postgres_database
from tests.platform import make_platform

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MIN_PSF_STARS = Settings.reference_min_psf_stars
SENSOR_NAME_TAG, LAUNCHED_BY_TAG = "dagster/sensor_name", "astro/launched_by"


def postgres_instance_env(url: str) -> dict[str, str]:
    """The README's settings for a Dagster instance on the PostgreSQL database at ``url``."""
    parts = sa.make_url(url)
    env = {"DAGSTER_PG_HOST": parts.host, "DAGSTER_PG_USERNAME": parts.username, "DAGSTER_PG_DB": parts.database,
           "DAGSTER_PG_PORT": str(parts.port or 5432)}
    if parts.password:
        env["PGPASSWORD"] = parts.password  # libpq reads it
    return env


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """One field, two epochs (a reference and a difference) processed with Dagster's storage on PostgreSQL."""
    root = tmp_path_factory.mktemp("pg_instance")
    night = root / "night"
    simulate_night(night, n_fields=1, n_epochs=2, size=1024, n_bias=3, n_flats=3, transients_per_frame=8, seed=11,
                   truth_path=root / "truth.csv")
    dagster_home = root / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", dagster_home / "dagster.yaml")
    with fresh_postgres_database() as url, mock.patch.dict(os.environ, postgres_instance_env(url)):
        instance = DagsterInstance.from_config(str(dagster_home))
        try:
            platform = make_platform(root, f"sqlite:///{root / 'catalog.sqlite'}", instance)
            report = process_folder(night, platform.settings, wait=True, instance=instance, progress=lambda _: None)
            yield platform, report, url
            platform.catalog.engine.dispose()
        finally:
            instance.dispose()


def test_the_chain_runs_with_the_instance_on_postgresql(processed):
    platform, report, url = processed
    assert report.runs and not report.failed, [(r.job_name, r.partition_key) for r in report.failed]
    assert sorted(r.job_name for r in report.runs) == ["calibrate_job"] * 2 + ["difference_job"] * 2 + ["reference_job"]
    engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg2"))
    try:
        with engine.connect() as connection:  # Dagster's own tables, in that database
            stored = set(connection.execute(sa.text("SELECT run_id FROM runs")).scalars())
    finally:
        engine.dispose()
    assert {r.run_id for r in report.runs} <= stored
    with platform.catalog.session() as session:
        assert session.scalars(sa.select(Observation.status)).all() == [ObservationStatus.DIFFERENCED] * 2


def test_every_run_says_what_launched_it(processed):
    platform, report, _ = processed
    sensors = {"calibrate_job": "raw_arrival_sensor", "reference_job": "reference_and_difference_sensor",
               "difference_job": "reference_and_difference_sensor"}
    for record in report.runs:
        tags = platform.instance.get_run_by_id(record.run_id).tags
        assert tags[LAUNCHED_BY_TAG] == "process", tags
        assert tags[SENSOR_NAME_TAG] == sensors[record.job_name], (record.job_name, tags)


def test_the_reference_check_is_evaluated_and_passes(processed):
    platform, _, _ = processed
    result = defs.resolve_job_def("reference_job").execute_in_process(
        instance=platform.instance, partition_key="F001-r", resources=platform.resources)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {USABLE_CHECK, DEPTH_CHECK}
    assert all(e.asset_key == AssetKey("reference_image") for e in evaluations.values())
    assert evaluations[USABLE_CHECK].passed and evaluations[DEPTH_CHECK].passed  # the same frame again: as deep
    assert evaluations[USABLE_CHECK].metadata["psf_stars"].value >= MIN_PSF_STARS


def test_the_reference_check_fails_on_a_bad_reference():
    good = ImagePlanes(np.ones((8, 8), np.float32), np.ones((8, 8), np.float32), np.zeros((8, 8), np.uint16))
    assert usable_for_differences(good, MIN_PSF_STARS, MIN_PSF_STARS).passed
    assert not usable_for_differences(good, MIN_PSF_STARS - 1, MIN_PSF_STARS).passed
    assert not usable_for_differences(good, 0, MIN_PSF_STARS, "only 4 stars given for the PSF fit").passed
    bad_variance = ImagePlanes(good.data, good.variance.copy(), good.mask)
    bad_variance.variance[3, 3] = 0.0
    assert not usable_for_differences(bad_variance, 50, MIN_PSF_STARS).passed
    masked = ImagePlanes(good.data.copy(), good.variance, good.mask.copy())
    masked.data[3, 3], masked.mask[3, 3] = np.nan, 1  # a masked NaN is fine
    assert usable_for_differences(masked, 50, MIN_PSF_STARS).passed


def test_an_observation_is_differenced_together_with_its_candidates(processed):
    """The difference and the candidates it emits are recorded in one transaction; the candidates asset
    then presents them from the catalog (candidates.ecsv) without changing them."""
    platform, _, _ = processed
    with platform.catalog.session() as session:
        run = session.scalars(sa.select(DifferenceRun).where(DifferenceRun.status == RunStatus.COMPLETED)).first()
        key = run.observation.observation_id
    half = materialize([difference_image], instance=platform.instance, partition_key=key, resources=platform.resources)
    assert half.success
    with platform.catalog.session() as session:
        observation = queries.get_observation(session, key)
        stored = session.scalar(sa.select(sa.func.count()).select_from(Candidate)
                                .where(Candidate.observation_id == observation.id))
        assert observation.difference_run.status is RunStatus.COMPLETED
        assert observation.status is ObservationStatus.DIFFERENCED
        assert stored == observation.difference_run.candidates_found > 0
        table_path = Path(observation.difference_run.difference_image_path).with_name("candidates.ecsv")
    rest = materialize([candidates], instance=platform.instance, partition_key=key, resources=platform.resources)
    assert rest.success
    assert len(Table.read(table_path, format="ascii.ecsv")) == stored
