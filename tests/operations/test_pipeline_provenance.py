"""A simulated night through `process`: the ledger records it, and provenance answers for its files."""

import json

import pytest
import sqlalchemy as sa
from dagster import instance_for_test

from dagster_project.catalog import queries
from dagster_project.catalog.schema import OperationOutcome, OperationType
from dagster_project.catalog.schema import Artifact, ProcessingRun, ProcessingStep
from dagster_project.cli.main import main as cli_main
from dagster_project.ingest.landing import sha256_of
from dagster_project.cli.runner import process_folder
from dagster_project.definitions import defs
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

operations_ledger_sensor = defs.resolve_sensor_def("operations_ledger_sensor")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """One field, two epochs at 640 px (the smallest the PSF fit is happy with), through `process`."""
    night = tmp_path_factory.mktemp("night")
    simulate_night(night, n_fields=1, n_epochs=2, size=640, n_bias=2, n_flats=2, transients_per_frame=3, seed=5)
    root = tmp_path_factory.mktemp("platform")
    with instance_for_test() as instance:
        platform = make_platform(root, f"sqlite:///{root / 'catalog.sqlite'}", instance)
        report = process_folder(night, platform.settings, instance=instance, progress=lambda _: None)
        yield platform, report
        platform.catalog.engine.dispose()


@pytest.fixture
def cli(processed, monkeypatch, capsys):
    """The command line on the processed platform; returns (exit code, stdout)."""
    platform, _ = processed
    monkeypatch.setenv("DATABASE_URL", platform.settings.database_url)
    monkeypatch.setenv("ASTRO_STORE_DIR", str(platform.settings.store_dir))
    monkeypatch.setenv("ASTRO_SURVEY", platform.settings.survey)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = cli_main(list(argv))
        return code, capsys.readouterr().out

    return run


def test_process_is_one_operation_counting_its_runs(processed):
    platform, report = processed
    assert not report.failed and len(report.runs) == 5  # 2 calibrations, 1 reference, 2 differences
    with platform.catalog.session() as s:
        process = queries.get_operation(s, report.operation_id)
        assert process.type == OperationType.PROCESS_FOLDER and process.outcome is OperationOutcome.SUCCEEDED
        assert process.summary_counts == {"total": 5, "success": 5, "failed": 0, "skipped": 0}
        assert sorted(process.context["dagster_run_ids"]) == sorted(r.run_id for r in report.runs)
        (scan,) = queries.list_operations(s, operation_type=OperationType.INGEST_SCAN)
        assert scan.initiator_name == "System" and scan.operator is None
        assert scan.summary_counts == {"total": 6, "success": 6, "failed": 0, "skipped": 0}  # 2 bias, 2 flats, 2 science
        assert len(scan.context["requested_runs"]) == 2
        runs = s.scalars(sa.select(ProcessingRun)).all()
        assert sorted(r.dagster_run_id for r in runs) == sorted(r.run_id for r in report.runs)
        assert {r.operation_run_id for r in runs} == {process.id}


def test_provenance_of_a_difference_image(processed, cli):
    platform, report = processed
    (path,) = platform.settings.store_dir.glob("products/*/*/difference.fits")  # epoch 0 is the reference
    code, out = cli("provenance", str(path), "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["matched"].startswith("the file on disk has these bytes")
    assert answer["artifact"]["sha256"] == sha256_of(path)
    assert answer["artifact"]["path"] == path.relative_to(platform.settings.store_dir).as_posix()
    assert (answer["artifact"]["asset"], answer["artifact"]["mime_type"]) == ("difference_image", "image/fits")
    assert answer["artifact"]["code_version"] == "0.1.0"
    difference_run = next(r for r in report.runs if r.job_name == "difference_job" and r.partition_key in str(path))
    assert answer["run"]["dagster_run_id"] == difference_run.run_id and answer["run"]["job"] == "difference_job"
    assert answer["run"]["partitions"] == [difference_run.partition_key]
    assert answer["run"]["operation"].startswith(f"#{report.operation_id} process.folder")
    assert answer["parameters"]["difference"]["algorithm"] == "zogy"
    assert answer["parameters"]["metadata"]["reference_version"] == 1
    inputs = {i["role"]: i for i in answer["inputs"]}
    assert set(inputs) == {"calibrated_image", "reference_image", "reference_characterization"}
    calibrate_run = next(r for r in report.runs if r.job_name == "calibrate_job" and r.partition_key in str(path))
    assert inputs["calibrated_image"]["made_by_run"] == calibrate_run.run_id
    reference_run = next(r for r in report.runs if r.job_name == "reference_job")
    assert inputs["reference_image"]["made_by_run"] == reference_run.run_id
    # the reference's background, stars and PSF, computed once when the reference was frozen
    assert inputs["reference_characterization"]["made_by_run"] == reference_run.run_id


def test_provenance_of_a_calibrated_frame_reaches_the_raw_file(processed, cli):
    platform, _ = processed
    path = sorted(platform.settings.store_dir.glob("products/*/*/calibrated.fits"))[0]
    code, out = cli("provenance", path.relative_to(platform.settings.store_dir).as_posix(), "--json")
    inputs = {i["role"]: i for i in json.loads(out)["inputs"]}
    assert code == 0 and set(inputs) == {"raw_frame", "master_bias", "master_flat"}
    assert inputs["raw_frame"]["raw_file"].endswith(".fits v1")
    assert inputs["master_bias"]["path"].startswith("calib/") and len(inputs["master_bias"]["sha256"]) == 64


def test_everything_derived_from_the_reference_frame(processed, cli):
    platform, report = processed
    first = min((r for r in report.runs if r.job_name == "calibrate_job"), key=lambda r: r.partition_key)
    with platform.catalog.session() as s:
        raw = queries.get_observation(s, first.partition_key).raw_file.stored_path
    code, out = cli("provenance", raw, "--derived", "--json")
    derived = {(a["asset"], a["partition"]) for a in json.loads(out)["derived"]}
    assert code == 0
    second = max(r.partition_key for r in report.runs if r.job_name == "calibrate_job")
    # its own calibrated frame, the reference made from it, and through that the other frame's subtraction
    assert {("calibrated_image", first.partition_key), ("reference_image", "F001-r"),
            ("difference_image", second), ("candidates", second)} <= derived
    assert ("calibrated_image", second) not in derived  # another raw file's


def test_provenance_of_an_unknown_file_is_an_error(cli, tmp_path):
    stray = tmp_path / "stray.fits"
    stray.write_bytes(b"x")
    assert cli("provenance", str(stray))[0] == 2


def test_runs_tail_prints_every_step_of_a_finished_run(processed, cli):
    _, report = processed
    code, out = cli("runs", "tail", report.runs[0].run_id)
    lines = out.splitlines()
    assert code == 0 and lines[-1] == f"run {report.runs[0].run_id} completed"
    assert "run_start" in lines[0] and any("materialization" in line and "calibrated_image" in line
                                           for line in lines)
    assert any("→ products/" in line and "calibrated.fits" in line for line in lines)


def test_operations_list_and_show(processed, cli):
    _, report = processed
    code, out = cli("operations", "list")
    assert code == 0 and "process.folder" in out and "ingest.scan" in out
    code, out = cli("operations", "show", str(report.operation_id), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["outcome"] == "succeeded" and len(shown["runs"]) == 5
    assert cli("operations", "show", "999999")[0] == 2


def test_the_sensor_rebuilds_the_same_provenance(processed):
    """Mirrored again from the event log by the sensor, provenance is what the runner recorded."""
    platform, _ = processed

    def snapshot():
        with platform.catalog.session() as s:
            return sorted(s.execute(sa.select(ProcessingRun.dagster_run_id, ProcessingStep.sequence,
                                              ProcessingStep.type, Artifact.path, Artifact.sha256)
                                    .join(ProcessingStep, ProcessingStep.processing_run_id == ProcessingRun.id)
                                    .outerjoin(Artifact, Artifact.step_id == ProcessingStep.id)).all(),
                          key=str)

    before = snapshot()
    with platform.catalog.session() as s:
        s.execute(sa.delete(ProcessingRun))
    result, _ = platform.tick(operations_ledger_sensor)
    assert "mirrored 5 run(s)" in result.skip_message
    assert snapshot() == before
