"""Provenance in the catalog: runs, ordered steps, artifacts and input links, written from plain records."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dagster_project.catalog import IllegalTransition, queries
from dagster_project.catalog.schema import ObservationStatus, RawDataFile, RunStatus
from dagster_project.catalog.queries import (
    ArtifactRecord,
    InputRecord,
    StepRecord,
    abandon_running_attempts,
    append_steps,
    derived_artifacts,
    lineage,
    mirrored_up_to,
    producing_artifact,
    record_processing_run,
    steps_after,
)
from dagster_project.catalog.schema import Artifact, ProcessingRunStatus, ProcessingStep, StepType
from tests.catalog import T0, observation, sha

P = ProcessingRunStatus


def artifact(role: str, path: str, content: str, partition: str = "F001-r-0001") -> ArtifactRecord:
    return ArtifactRecord(role=role, path=path, mime_type="image/fits", size_bytes=100, sha256=sha(content),
                          asset_key=role, partition_key=partition, code_version="0.1.0")


def materialization(event_id: int, minute: int, artifacts=(), inputs=()) -> StepRecord:
    return StepRecord(event_id, StepType.MATERIALIZATION, T0 + timedelta(minutes=minute),
                      {"asset_key": artifacts[0].asset_key if artifacts else "raw_observation"}, 12.5,
                      tuple(artifacts), tuple(inputs))


def mirror(session, run_id: str, job: str, steps, status=P.COMPLETED):
    run = record_processing_run(session, dagster_run_id=run_id, job_name=job, status=status,
                                partition_keys=["F001-r-0001"], started_at=T0, finished_at=T0 + timedelta(hours=1))
    return run, append_steps(session, run, steps)


@pytest.fixture
def night(catalog):
    """A frame calibrated, made the reference, and another frame differenced against it."""
    with catalog.session() as s:
        obs = observation(s, 1)
        raw = obs.raw_file
        mirror(s, "calibrate-1", "calibrate_job", [
            StepRecord(1, StepType.RUN_START, T0, {}),
            StepRecord(2, StepType.STEP_START, T0, {"step_key": "calibrated_image"}),
            materialization(3, 1, [artifact("calibrated_image", "products/a/calibrated.fits", "cal-a")],
                            [InputRecord("raw_frame", "raw/n/a.fits", raw.sha256),
                             InputRecord("master_bias", "calib/cam/n/bias.fits", sha("bias"))]),
            StepRecord(4, StepType.RUN_END, T0 + timedelta(minutes=2), {"status": "success"}, 120000.0),
        ])
        mirror(s, "calibrate-2", "calibrate_job", [
            materialization(1, 3, [artifact("calibrated_image", "products/b/calibrated.fits", "cal-b", "F001-r-0002")]),
        ])
        mirror(s, "reference-1", "reference_job", [
            materialization(7, 4, [artifact("reference_image", "references/F001-r/v1.fits", "ref-1", "F001-r")],
                            [InputRecord("calibrated_image", "products/a/calibrated.fits", sha("cal-a"))]),
        ])
        mirror(s, "difference-2", "difference_job", [
            materialization(9, 5, [artifact("difference_image", "products/b/difference.fits", "diff-b", "F001-r-0002"),
                                   artifact("detections_table", "products/b/detections.ecsv", "det-b", "F001-r-0002")],
                            [InputRecord("calibrated_image", "products/b/calibrated.fits", None),
                             InputRecord("reference_image", "references/F001-r/v1.fits", sha("ref-1"))]),
        ])
        return raw.id


def test_steps_are_ordered_and_mirroring_twice_adds_nothing(catalog, night):
    with catalog.session() as s:
        run, added = mirror(s, "calibrate-1", "calibrate_job", [
            StepRecord(2, StepType.STEP_START, T0, {"step_key": "calibrated_image"}),
            StepRecord(5, StepType.STEP_SUCCESS, T0 + timedelta(minutes=2), {"step_key": "calibrated_image"}, 900.0),
        ])
        assert [step.event_storage_id for step in added] == [5]  # event 2 was mirrored already
        steps = steps_after(s, "calibrate-1")
        assert [(st.sequence, st.type) for st in steps] == [
            (0, StepType.RUN_START), (1, StepType.STEP_START), (2, StepType.MATERIALIZATION), (3, StepType.RUN_END),
            (4, StepType.STEP_SUCCESS)]
        assert [st.sequence for st in steps_after(s, "calibrate-1", 2)] == [3, 4]
        assert mirrored_up_to(s, "calibrate-1") == 5 and mirrored_up_to(s, "unknown") == -1
        assert s.scalar(sa.select(sa.func.count()).select_from(Artifact)) == 5


def test_the_database_refuses_a_step_twice(catalog, night):
    with pytest.raises(IntegrityError), catalog.session() as s:
        run = s.scalars(sa.select(ProcessingStep).where(ProcessingStep.event_storage_id == 3)).one().run
        s.add(ProcessingStep(run=run, sequence=99, type=StepType.FAILURE, content={}, timestamp=T0,
                             event_storage_id=3))


def test_run_status_follows_its_state_machine(catalog):
    with catalog.session() as s:
        run = record_processing_run(s, dagster_run_id="r1", job_name="calibrate_job", status=P.PENDING)
        assert record_processing_run(s, dagster_run_id="r1", job_name="calibrate_job", status=P.RUNNING,
                                     started_at=T0).status is P.RUNNING
        assert record_processing_run(s, dagster_run_id="r1", job_name="calibrate_job", status=P.CANCELLED,
                                     started_at=T0, finished_at=T0).id == run.id
        with pytest.raises(IllegalTransition):
            record_processing_run(s, dagster_run_id="r1", job_name="calibrate_job", status=P.RUNNING)


def test_lineage_names_the_run_and_inputs(catalog, night):
    with catalog.session() as s:
        calibrated = producing_artifact(s, "products/a/calibrated.fits")
        found = lineage(s, calibrated)
        assert found.run.dagster_run_id == "calibrate-1" and found.step.sequence == 2
        assert (calibrated.asset_key, calibrated.partition_key, calibrated.code_version) == (
            "calibrated_image", "F001-r-0001", "0.1.0")
        inputs = {i.role: i for i in found.inputs}
        assert inputs["raw_frame"].raw_data_file_id == night  # matched by content
        assert inputs["master_bias"].raw_data_file_id is None and inputs["master_bias"].input_artifact_id is None
        difference = producing_artifact(s, "products/b/difference.fits")
        inputs = {i.role: i for i in lineage(s, difference).inputs}
        assert inputs["reference_image"].input_artifact.step.run.dagster_run_id == "reference-1"
        # an input whose bytes were not fingerprinted is the artifact written at that path before it was read
        assert inputs["calibrated_image"].input_artifact.step.run.dagster_run_id == "calibrate-2"


def test_producing_artifact_by_content_or_by_time(catalog, night):
    with catalog.session() as s:
        mirror(s, "calibrate-1b", "calibrate_job", [
            materialization(1, 30, [artifact("calibrated_image", "products/a/calibrated.fits", "cal-a2")])])
        path = "products/a/calibrated.fits"
        assert producing_artifact(s, path).step.run.dagster_run_id == "calibrate-1b"  # the newest
        assert producing_artifact(s, path, sha("cal-a")).step.run.dagster_run_id == "calibrate-1"
        assert producing_artifact(s, path, at=T0 + timedelta(minutes=10)).step.run.dagster_run_id == "calibrate-1"
        assert producing_artifact(s, path, sha("something else")) is None


def test_everything_derived_from_a_raw_file(catalog, night):
    with catalog.session() as s:
        raw = s.get(RawDataFile, night)
        derived = [(a.role, a.path) for a in derived_artifacts(s, raw)]
        # its calibrated frame, the reference made from that, and the difference of another frame against it
        assert derived == [("calibrated_image", "products/a/calibrated.fits"),
                           ("reference_image", "references/F001-r/v1.fits"),
                           ("detections_table", "products/b/detections.ecsv"),
                           ("difference_image", "products/b/difference.fits")]
        other = producing_artifact(s, "products/b/calibrated.fits")
        assert [a.role for a in derived_artifacts(s, other)] == ["detections_table", "difference_image"]


def test_abandoned_attempts_are_closed_as_failed(catalog):
    with catalog.session() as s:
        obs = observation(s, 1)
        queries.start_preprocess_run(s, obs, {}, "dead-run")
        other = observation(s, 2)
        queries.start_preprocess_run(s, other, {}, "live-run")
        assert abandon_running_attempts(s, "dead-run", "Dagster run dead-run ended canceled") == 1
        assert abandon_running_attempts(s, "dead-run", "again") == 0
    with catalog.session() as s:
        obs, other = queries.get_observation(s, obs.observation_id), queries.get_observation(s, other.observation_id)
        assert obs.preprocess_run.status is RunStatus.FAILED
        assert obs.status is ObservationStatus.FAILED and "canceled" in obs.status_reason
        assert other.preprocess_run.status is RunStatus.RUNNING
