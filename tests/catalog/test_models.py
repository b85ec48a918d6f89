"""Models round-trip on both backends, and the database itself enforces every invariant."""

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from dagster_project.catalog import (
    Base,
    CalibrationMaster,
    Candidate,
    CandidateStatus,
    DifferenceRun,
    FrameType,
    MasterKind,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    ReferenceImage,
    RunStatus,
    Survey,
    queries,
)
from tests.catalog import T0, observation, raw_file, sha

LOCAL = timezone(timedelta(hours=2))


def test_every_model_round_trips(catalog):
    when = datetime(2026, 11, 22, 5, 15, 30, 123456, tzinfo=LOCAL)  # stored as UTC, read back aware
    with catalog.session() as s:
        survey = Survey(name="ZTF-like", description="d", base_url="https://x", api_endpoint="https://x/api",
                        is_active=False)
        obs = Observation(survey=survey, observation_id="F001-r-20261122T031500-1a2b3c4d", field_name="F001",
                          instrument="cam1", ra=359.5, dec=-89.5, healpix_index=123, observation_time=when,
                          mjd=61000.5, night="2026-11-21", filter_band="r", exposure_time=30.5,
                          fits_url="/store/raw/a.fits", pixel_scale=0.4, airmass=1.2, seeing=1.1, naxis1=2048,
                          naxis2=4096, status=ObservationStatus.INGESTED)
        raw = RawDataFile(original_name="a.fits", version=1, landing_path="/l/a.fits", stored_path="/s/a.fits",
                          size_bytes=5 * 2**30, sha256=sha("a"), status=RawFileStatus.ACCEPTED,
                          frame_type=FrameType.SCIENCE, instrument="cam1", filter_band="r", night="2026-11-21",
                          observation_time=when, header={"EXPTIME": 30.5, "OBJECT": "F001", "NAXIS": [1, 2]},
                          arrival_time=when, survey=survey, observation=obs)
        dup = RawDataFile(original_name="b.fits", version=1, landing_path="/l/b.fits", size_bytes=1,
                          sha256=sha("a"), status=RawFileStatus.DUPLICATE, duplicate_of=raw)
        bias = CalibrationMaster(kind=MasterKind.BIAS, instrument="cam1", night="2026-11-21", filter_band="",
                                 path="/m/bias.fits", n_frames=9, input_file_ids=[str(uuid.uuid4())],
                                 stats={"median": 1000.5})
        pre = PreprocessRun(observation=obs, status=RunStatus.COMPLETED, calibration_applied=True, wcs_aligned=True,
                            registration_quality=0.98, processed_fits_path="/p.fits", wcs_info={"CRVAL1": 359.5},
                            processing_time_seconds=3.5, retry_count=2, parameters={"k": [1, 2]},
                            quality={"fwhm": 3.1}, master_bias=bias, calibration_note="used masters from 2026-11-20",
                            dagster_run_id="run-1", started_at=when, finished_at=when + timedelta(seconds=3.5))
        ref = ReferenceImage(field_name="F001", filter_band="r", version=1, source_observation=obs, path="/r.fits",
                             seeing=0.9, depth=21.5, selection_reason="best seeing", is_current=True)
        diff = DifferenceRun(observation=obs, reference_observation=obs, reference_image=ref, reference_version=1,
                             parameters={"threshold": 5}, difference_image_path="/d.fits",
                             significance_map_path="/s.fits", noise_level=1.5, detection_threshold=5.0,
                             candidates_found=1, status=RunStatus.SKIPPED, quality={})
        cand = Candidate(difference_run=diff, observation=obs, ra=0.0, dec=90.0, healpix_index=7, pixel_x=0.0,
                         pixel_y=4095.5, flux=-12.5, flux_error=0.0, significance=-6.0, snr=-5.5, fwhm=2.5,
                         ellipticity=1.0, position_angle=-45.0, is_negative=True, is_edge=True,
                         features={"real_bogus": 0.7})
        s.add_all([survey, obs, raw, dup, bias, pre, ref, diff, cand])
        s.flush()
        ids = {type(x): x.id for x in (survey, obs, raw, bias, pre, ref, diff, cand)}

    with catalog.session() as s:
        obs = s.get(Observation, ids[Observation])
        assert obs.observation_time == when and obs.observation_time.tzinfo is UTC
        assert (obs.ra, obs.dec, obs.status, obs.naxis2) == (359.5, -89.5, ObservationStatus.INGESTED, 4096)
        assert obs.survey.name == "ZTF-like" and obs.survey.is_active is False
        assert obs.raw_file.id == ids[RawDataFile]
        assert obs.raw_file.header == {"EXPTIME": 30.5, "OBJECT": "F001", "NAXIS": [1, 2]}
        assert obs.raw_file.size_bytes == 5 * 2**30 and obs.raw_file.frame_type is FrameType.SCIENCE
        assert obs.preprocess_run.master_bias.kind is MasterKind.BIAS
        assert obs.preprocess_run.wcs_info == {"CRVAL1": 359.5}
        assert obs.preprocess_run.finished_at - obs.preprocess_run.started_at == timedelta(seconds=3.5)
        assert obs.difference_run.status is RunStatus.SKIPPED and obs.difference_run.algorithm == "zogy"
        assert obs.difference_run.reference_image.source_observation is obs
        (cand,) = obs.difference_run.candidates
        assert (cand.ra, cand.dec, cand.flux, cand.status) == (0.0, 90.0, -12.5, CandidateStatus.NEW)
        assert cand.is_negative and cand.is_edge and not cand.is_saturated
        dup = s.scalars(sa.select(RawDataFile).where(RawDataFile.status == RawFileStatus.DUPLICATE)).one()
        assert dup.duplicate_of.id == ids[RawDataFile]
        for model, id_ in ids.items():
            row = s.get(model, id_)
            assert isinstance(row.id, uuid.UUID)
            assert row.created_at.tzinfo is UTC and row.updated_at.tzinfo is UTC


def test_naive_datetimes_are_refused(catalog):
    with pytest.raises(StatementError, match="naive datetime"), catalog.session() as s:
        s.add(Survey(name="x", created_at=datetime(2026, 1, 1)))
        s.flush()


def test_updated_at_moves_on_update(catalog):
    with catalog.session() as s:
        survey = queries.get_or_create_survey(s, "test")
    first = survey.updated_at
    with catalog.session() as s:
        s.get(Survey, survey.id).description = "changed"
    with catalog.session() as s:
        again = s.get(Survey, survey.id)
        assert again.updated_at > first and again.created_at == survey.created_at


def test_server_defaults_fill_raw_sql_inserts(catalog):
    with catalog.session() as s:
        s.execute(sa.text("INSERT INTO surveys (id, name) VALUES (:id, 'raw')"),
                  {"id": uuid.uuid4().hex if catalog.engine.dialect.name == "sqlite" else str(uuid.uuid4())})
    with catalog.session() as s:
        survey = s.scalars(sa.select(Survey).where(Survey.name == "raw")).one()
        assert survey.is_active is True
        assert abs(survey.created_at - datetime.now(UTC)) < timedelta(minutes=5)


# --- CHECK constraints, proven by the database: Core inserts bypass every ORM-side rule ---------------------------

@pytest.fixture
def parents(catalog):
    with catalog.session() as s:
        obs = observation(s)
        pre = queries.start_preprocess_run(s, obs, {}, "run-1")
        queries.finish_preprocess_run(s, pre, status=RunStatus.COMPLETED)
        ref = queries.record_reference(s, "F001", "r", obs, "/ref.fits", 1.0, 21.0, "first", "run-2")
        diff = queries.start_difference_run(s, obs, ref, {}, "run-3")
        return {"survey_id": obs.survey_id, "observation_id": obs.id, "difference_run_id": diff.id,
                "raw_file_id": obs.raw_file.id}


def valid_row(catalog, table: str, parents: dict) -> dict:
    """A row the database accepts; unique values are fresh on every call."""
    new = uuid.uuid4().hex
    if table in ("preprocess_runs", "difference_runs"):
        with catalog.session() as s:  # one run per observation
            run_parent = observation(s, int(new[:6], 16)).id
    return {
        "observations": lambda: dict(survey_id=parents["survey_id"], observation_id=f"obs-{new}", field_name="F002",
                                     ra=10.0, dec=10.0, healpix_index=1, observation_time=T0, night="2026-11-21",
                                     filter_band="r", exposure_time=1.0, fits_url="/x.fits", status="ingested"),
        "candidates": lambda: dict(difference_run_id=parents["difference_run_id"], ra=1.0, dec=1.0,
                                   observation_id=parents["observation_id"], healpix_index=1, pixel_x=1.0,
                                   pixel_y=1.0, features={}),
        "raw_data_files": lambda: dict(original_name=f"{new}.fits", version=1, landing_path="/l", size_bytes=1,
                                       sha256=sha(new), status="accepted", header={}, arrival_time=T0),
        "calibration_masters": lambda: dict(kind="flat", instrument=f"cam-{new}", night="2026-11-21",
                                            filter_band="r", path="/m", n_frames=3, input_file_ids=[], stats={}),
        "reference_images": lambda: dict(field_name=f"F-{new}", filter_band="r", version=1, path="/r",
                                         source_observation_id=parents["observation_id"], is_current=False),
        "preprocess_runs": lambda: dict(observation_id=run_parent, parameters={}, quality={}, status="pending"),
        "difference_runs": lambda: dict(observation_id=run_parent, parameters={}, quality={}, status="pending"),
    }[table]()


def core_insert(catalog, table: str, row: dict) -> None:
    """A Core insert: column types convert values, but no ORM code sees them; only the database can refuse."""
    with catalog.engine.begin() as connection:
        connection.execute(sa.insert(Base.metadata.tables[table]), row)


BAD_VALUES = [
    ("observations", {"ra": 360.0}), ("observations", {"ra": -0.001}), ("observations", {"dec": 90.001}),
    ("observations", {"dec": -91.0}), ("observations", {"exposure_time": 0.0}),
    ("observations", {"exposure_time": -5.0}), ("observations", {"airmass": 0.0}), ("observations", {"seeing": 0.0}),
    ("observations", {"seeing": -1.0}), ("observations", {"pixel_scale": 0.0}), ("observations", {"naxis1": 0}),
    ("observations", {"night": "20261121"}),
    ("candidates", {"ra": 360.0}), ("candidates", {"dec": 91.0}), ("candidates", {"ellipticity": 1.5}),
    ("candidates", {"ellipticity": -0.1}), ("candidates", {"flux_error": -1.0}), ("candidates", {"fwhm": 0.0}),
    ("raw_data_files", {"version": 0}), ("raw_data_files", {"size_bytes": -1}),
    ("raw_data_files", {"sha256": "abc"}), ("raw_data_files", {"sha256": "g" * 64}),
    ("raw_data_files", {"sha256": "A" * 64}), ("raw_data_files", {"status": "quarantined"}),
    ("raw_data_files", {"status": "duplicate"}), ("raw_data_files", {"night": "Nov 21"}),
    ("calibration_masters", {"kind": "bias"}), ("calibration_masters", {"filter_band": ""}),
    ("calibration_masters", {"n_frames": 0}),
    ("reference_images", {"version": 0}), ("reference_images", {"seeing": 0.0}),
    ("preprocess_runs", {"retry_count": -1}), ("preprocess_runs", {"processing_time_seconds": -0.5}),
    ("difference_runs", {"candidates_found": -1}), ("difference_runs", {"reference_version": 0}),
]


@pytest.mark.parametrize(("table", "bad"), BAD_VALUES, ids=[f"{t}-{k}={v}" for t, b in BAD_VALUES
                                                             for k, v in b.items()])
def test_database_check_rejects(catalog, parents, table, bad):
    core_insert(catalog, table, valid_row(catalog, table, parents))  # control: a valid row goes in...
    with pytest.raises(IntegrityError):  # ...the same with one bad value does not
        core_insert(catalog, table, {**valid_row(catalog, table, parents), **bad})


@pytest.mark.parametrize("table", ["observations", "raw_data_files", "candidates"])
def test_database_rejects_unknown_enum_values(catalog, parents, table):
    column = "frame_type" if table == "raw_data_files" else "status"
    row = valid_row(catalog, table, parents)
    # literal_column: no Python-side enum validation, the database alone decides
    with pytest.raises(DBAPIError):  # IntegrityError (SQLite CHECK) or DataError (PostgreSQL enum type)
        with catalog.engine.begin() as connection:
            connection.execute(sa.insert(Base.metadata.tables[table]).values(
                {**row, column: sa.literal_column("'bogus'")}))


# --- UNIQUE constraints and partial unique indexes ------------------------------------------------------------------

def test_raw_file_name_and_version_are_unique(catalog):
    with catalog.session() as s:
        first = raw_file(s, "a.fits", content=1)
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(RawDataFile(original_name="a.fits", version=first.version, landing_path="/l", size_bytes=1,
                          sha256=sha(2), status=RawFileStatus.ACCEPTED))


def test_sha256_is_unique_among_stored_files_only(catalog):
    with catalog.session() as s:
        original = raw_file(s, "a.fits", content=1)
        for n in range(2):  # any number of duplicate records may share the content
            queries.register_duplicate_file(s, original=original, original_name="a.fits", landing_path="/l",
                                            size_bytes=1, sha256=sha(1))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(RawDataFile(original_name="other.fits", version=1, landing_path="/l", size_bytes=1, sha256=sha(1),
                          status=RawFileStatus.QUARANTINED, quarantine_reason="bad"))


def test_only_one_current_reference_per_field_and_band(catalog):
    with catalog.session() as s:
        obs = observation(s)
        s.add(ReferenceImage(field_name="F001", filter_band="r", version=1, source_observation=obs, path="/1"))
        s.add(ReferenceImage(field_name="F001", filter_band="g", version=1, source_observation=obs, path="/1g"))
        s.add(ReferenceImage(field_name="F001", filter_band="r", version=2, source_observation=obs, path="/2",
                             is_current=False))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(ReferenceImage(field_name="F001", filter_band="r", version=3, source_observation_id=obs.id, path="/3"))


def test_one_preprocess_run_per_observation(catalog):
    with catalog.session() as s:
        obs = observation(s)
        s.add(PreprocessRun(observation=obs, status=RunStatus.PENDING))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(PreprocessRun(observation_id=obs.id, status=RunStatus.PENDING))


def test_one_difference_run_per_observation_and_unique_observation_id(catalog):
    with catalog.session() as s:
        obs = observation(s)
        s.add(DifferenceRun(observation=obs, status=RunStatus.PENDING))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(DifferenceRun(observation_id=obs.id, status=RunStatus.PENDING))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(Observation(survey_id=obs.survey_id, observation_id=obs.observation_id, field_name="F", ra=1, dec=1,
                          healpix_index=1, observation_time=T0, night="2026-11-21", filter_band="r",
                          exposure_time=1, fits_url="/x"))


def test_master_key_is_unique(catalog):
    with catalog.session() as s:
        s.add(CalibrationMaster(kind=MasterKind.BIAS, instrument="cam1", night="2026-11-21", path="/a", n_frames=3))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(CalibrationMaster(kind=MasterKind.BIAS, instrument="cam1", night="2026-11-21", path="/b", n_frames=5))


# --- foreign keys -----------------------------------------------------------------------------------------------------

def test_deleting_a_difference_run_deletes_its_candidates_in_the_database(catalog, parents):
    with catalog.session() as s:
        run = s.get(DifferenceRun, parents["difference_run_id"])
        queries.replace_candidates(s, run, [dict(ra=10.0, dec=20.0, pixel_x=1.0, pixel_y=2.0)] * 3)
    with catalog.engine.begin() as connection:  # plain SQL: the ON DELETE CASCADE, not the ORM, does it
        connection.execute(sa.text("DELETE FROM difference_runs"))
        assert connection.scalar(sa.text("SELECT count(*) FROM candidates")) == 0


def test_foreign_keys_are_enforced(catalog):
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(PreprocessRun(observation_id=uuid.uuid4(), status=RunStatus.PENDING))


def test_an_observation_with_a_reference_cannot_be_deleted(catalog, parents):
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM observations"))
