"""What must hold after any crash and restart: every file one accepted registration, every science
observation one completed chain, nothing duplicated, nothing left half done.

:func:`assert_every_file_once` checks the catalog, the store, provenance and the Dagster instance
against the files a test put in, and returns a few figures for the test to report.
"""

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from astropy.table import Table
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from dagster_project.catalog import Catalog, queries
from dagster_project.catalog.schema import (
    Candidate,
    Observation,
    ObservationStatus,
    RawDataFile,
    RawFileStatus,
    ReferenceImage,
    RunStatus,
)
from dagster_project.catalog.schema import Artifact, ProcessingRun, ProcessingRunStatus, ProcessingStep

OBSERVATION_ASSETS = ("raw_observation", "calibrated_image", "difference_image", "candidates")
MIRRORED = {DagsterRunStatus.SUCCESS: ProcessingRunStatus.COMPLETED, DagsterRunStatus.FAILURE: ProcessingRunStatus.FAILED,
            DagsterRunStatus.CANCELED: ProcessingRunStatus.CANCELLED}
UNFINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
              DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


@dataclass
class Outcome:
    files: int
    observations: int
    candidates: int
    runs: int
    failed_runs: int


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _latest_materialization_runs(instance: DagsterInstance, asset: str, partition: str) -> list[str]:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=100).records
    return [r.run_id for r in records]  # newest first


def assert_every_file_once(catalog: Catalog, instance: DagsterInstance, store_root: Path, files: dict[str, str],
                           *, landing: Path | None = None) -> Outcome:
    """``files``: name -> sha256 of every file the test put in (none of them bad). ``landing``: the folder
    they were moved from (move mode; must be empty of them now)."""
    problems: list[str] = []
    with catalog.session() as s:
        raws = s.scalars(sa.select(RawDataFile)).all()
        # -- every file exactly one registration, accepted, archived intact --------------------------------------------
        by_name = Counter(r.original_name for r in raws)
        problems += [f"{name}: {n} raw_data_files rows" for name, n in by_name.items() if n != 1]
        if set(by_name) != set(files):
            problems.append(f"registered names {sorted(by_name)} != files {sorted(files)}")
        for raw in raws:
            if raw.status is not RawFileStatus.ACCEPTED:
                problems.append(f"{raw.original_name}: {raw.status.value} ({raw.quarantine_reason})")
                continue
            if files.get(raw.original_name) != raw.sha256:
                problems.append(f"{raw.original_name}: catalog sha256 is not the file's")
            archived = Path(raw.stored_path)
            if not archived.is_file() or sha256(archived) != raw.sha256:
                problems.append(f"{raw.original_name}: archive {archived} missing or changed")
        archive_files = sorted(p for p in (store_root / "raw").rglob("*") if p.is_file())
        if len(archive_files) != len(files):
            problems.append(f"raw archive holds {len(archive_files)} files for {len(files)} registered: {archive_files}")
        if landing is not None:
            left = sorted(p.name for p in landing.rglob("*") if p.is_file())
            if left:
                problems.append(f"left in the landing folder: {left}")

        # -- every science observation: one completed chain ------------------------------------------------------------
        science = [r for r in raws if r.frame_type.value == "science"]
        observations = s.scalars(sa.select(Observation)).all()
        if len(observations) != len(science) or any(r.observation_id is None for r in science):
            problems.append(f"{len(observations)} observations for {len(science)} science files")
        references = s.scalars(sa.select(ReferenceImage)).all()
        # a version per set of inputs: two with the same set would be one reference built twice
        per_set = Counter((r.field_name, r.filter_band, r.inputs_digest) for r in references)
        problems += [f"{f}-{b}: {n} reference versions of the same inputs (one expected)"
                     for (f, b, _), n in per_set.items() if n != 1]
        # only a one-frame reference's own frame is skipped; the inputs of a co-add are differenced (leave one out)
        reference_sources = {r.source_observation_id for r in references if r.is_current and r.n_inputs == 1}
        n_candidates = 0
        for obs in observations:
            pre, diff = obs.preprocess_run, obs.difference_run
            label = obs.observation_id
            if obs.status is not ObservationStatus.DIFFERENCED:
                problems.append(f"{label}: {obs.status.value} ({obs.status_reason})")
            if pre is None or pre.status is not RunStatus.COMPLETED:
                problems.append(f"{label}: calibration {pre and pre.status.value}")
                continue
            if diff is None:
                problems.append(f"{label}: no difference")
                continue
            expected = RunStatus.SKIPPED if obs.id in reference_sources else RunStatus.COMPLETED
            if diff.status is not expected:
                problems.append(f"{label}: difference {diff.status.value}, {expected.value} expected ({diff.error_message})")
            rows = s.scalars(sa.select(Candidate).where(Candidate.observation_id == obs.id)).all()
            n_candidates += len(rows)
            if any(c.difference_run_id != diff.id for c in rows):
                problems.append(f"{label}: candidates of another difference attempt")
            if len(rows) != diff.candidates_found:
                problems.append(f"{label}: {len(rows)} candidates stored, {diff.candidates_found} found")
            positions = Counter((round(c.pixel_x, 3), round(c.pixel_y, 3)) for c in rows)
            if any(n > 1 for n in positions.values()):
                problems.append(f"{label}: the same candidate stored twice")
            if diff.status is RunStatus.COMPLETED:
                table = Path(diff.difference_image_path).with_name("candidates.ecsv")
                if not table.is_file():
                    problems.append(f"{label}: {table.name} missing although its candidates are stored")
                elif len(Table.read(table, format="ascii.ecsv")) != len(rows):
                    problems.append(f"{label}: {table.name} and the catalog disagree")
            # Dagster: each asset of the chain materialized, its latest materialization by the catalog's attempt
            for asset, attempt in (("calibrated_image", pre.dagster_run_id), ("difference_image", diff.dagster_run_id),
                                   ("candidates", diff.dagster_run_id), ("raw_observation", None)):
                runs = _latest_materialization_runs(instance, asset, label)
                if not runs:
                    problems.append(f"{label}: {asset} never materialized")
                elif attempt is not None and runs[0] != attempt:
                    problems.append(f"{label}: latest {asset} is from run {runs[0][:8]}, the catalog's attempt "
                                    f"is {attempt[:8]}")
            for attempt, row in ((pre.dagster_run_id, pre), (diff.dagster_run_id, diff)):
                run = instance.get_run_by_id(attempt) if attempt else None
                # a step completed in a run of the whole chain that died at a later step is done (its
                # materialization by that run is checked above); any other attempt's run must have succeeded
                completed_before_a_later_kill = (run is not None and run.status is DagsterRunStatus.FAILURE
                                                 and row.status is RunStatus.COMPLETED)
                if run is None or (run.status is not DagsterRunStatus.SUCCESS and not completed_before_a_later_kill):
                    problems.append(f"{label}: the catalog's attempt {attempt} is {run and run.status}")
        if observations and not n_candidates:
            problems.append("no candidates at all")
        partitions = sorted(instance.get_dynamic_partitions("observations"))
        if partitions != sorted(o.observation_id for o in observations):
            problems.append(f"observation partitions {partitions} != observations")

        # -- provenance: each run mirrored once, truthfully; no artifact twice; current ones describe the disk -------
        all_runs = instance.get_runs()
        unfinished = [r.run_id for r in all_runs if r.status in UNFINISHED]
        if unfinished:
            problems.append(f"Dagster runs never ended: {unfinished}")
        mirrored = {p.dagster_run_id: p for p in s.scalars(sa.select(ProcessingRun))}
        for run in all_runs:
            row = mirrored.get(run.run_id)
            if run.status in MIRRORED and (row is None or row.status is not MIRRORED[run.status]):
                problems.append(f"run {run.run_id[:8]} ({run.job_name}) {run.status.value}: provenance says "
                                f"{row and row.status.value}")
        twice = s.execute(sa.select(Artifact.step_id, Artifact.role, Artifact.path, sa.func.count())
                          .group_by(Artifact.step_id, Artifact.role, Artifact.path)
                          .having(sa.func.count() > 1)).all()
        problems += [f"artifact {role} {path} recorded {n} times by one step" for _, role, path, n in twice]
        attempts = {o.preprocess_run.dagster_run_id for o in observations if o.preprocess_run} | {
            o.difference_run.dagster_run_id for o in observations if o.difference_run}
        current = s.execute(sa.select(Artifact, ProcessingRun.dagster_run_id)
                            .join(ProcessingStep, Artifact.step_id == ProcessingStep.id)
                            .join(ProcessingRun, ProcessingStep.processing_run_id == ProcessingRun.id)
                            .where(ProcessingRun.dagster_run_id.in_(attempts),
                                   Artifact.asset_key.in_(OBSERVATION_ASSETS))).all()
        per_run = Counter((run_id, a.asset_key, a.partition_key, a.role) for a, run_id in current)
        problems += [f"run {k[0][:8]} {k[1]}[{k[2]}] {k[3]}: {n} artifacts" for k, n in per_run.items() if n != 1]
        for artifact, _ in current:
            path = store_root / artifact.path
            if not path.is_file():
                problems.append(f"artifact {artifact.path} of the current attempt is missing")
            elif artifact.sha256 is not None and sha256(path) != artifact.sha256:
                problems.append(f"artifact {artifact.path}: the file is not what its run wrote")
        if not current:
            problems.append("no provenance artifacts for the catalog's attempts")
        leftovers = sorted(str(p.relative_to(store_root)) for p in store_root.rglob("*.partial"))
        if leftovers:
            problems.append(f"half-written temporary files left in the store: {leftovers}")
        active = [f"#{op.id} {op.type} {op.status.value}" for op in queries.active_operations(s)]
        if active:
            problems.append(f"operations still active: {active}")
        outcome = Outcome(files=len(raws), observations=len(observations), candidates=n_candidates,
                          runs=len(all_runs), failed_runs=sum(r.status is DagsterRunStatus.FAILURE for r in all_runs))
    assert not problems, "\n".join(problems)
    return outcome


def all_runs_ended(instance: DagsterInstance) -> bool:
    return not instance.get_run_ids(RunsFilter(statuses=UNFINISHED))


def settled(catalog: Catalog, instance: DagsterInstance, n_science: int) -> bool:
    """Whether a daemon is done with the night: every observation differenced, every run ended and
    mirrored into provenance, no operation active (then it is safe to stop the daemon and check)."""
    if not all_runs_ended(instance):
        return False
    with catalog.session() as s:
        differenced = s.scalar(sa.select(sa.func.count()).where(Observation.status == ObservationStatus.DIFFERENCED))
        if differenced != n_science or queries.active_operations(s):
            return False
        mirrored = {run_id: status for run_id, status in s.execute(
            sa.select(ProcessingRun.dagster_run_id, ProcessingRun.status))}
    return all(mirrored.get(r.run_id) is MIRRORED.get(r.status) for r in instance.get_runs())
