"""Prompt processing: a frame whose field has a reference is requested as one run of its whole chain, and
no separate difference is asked for while that run is under way."""

import shutil

import pytest
from dagster import DagsterRunStatus, SensorResult, instance_for_test

from dagster_project.cli.runner import process_folder
from dagster_project.definitions import defs
from dagster_project.operations.mirror import PARTITION_NAME_TAG
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

raw_arrival_sensor = defs.resolve_sensor_def("raw_arrival_sensor")
reference_and_difference_sensor = defs.resolve_sensor_def("reference_and_difference_sensor")

pytestmark = pytest.mark.slow


@pytest.fixture
def platform(tmp_path, sqlite_url):
    """A field whose first epoch is calibrated and has its reference; its second epoch not landed yet."""
    night = tmp_path / "night"
    simulate_night(night, n_fields=1, n_epochs=2, size=512, n_bias=2, n_flats=2, transients_per_frame=2, seed=11)
    science = sorted(p for p in night.glob("*.fits") if "_sci_" in p.name)
    first = tmp_path / "first"
    first.mkdir()
    for path in sorted(night.glob("*.fits")):
        if path != science[1]:
            shutil.copy(path, first / path.name)
    with instance_for_test() as instance:
        platform = make_platform(tmp_path, sqlite_url, instance)
        report = process_folder(first, platform.settings, instance=instance, wait=True, progress=lambda _: None)
        assert report.runs and not report.failed
        assert {r.job_name for r in report.runs} >= {"calibrate_job", "reference_job"}
        yield platform, science[1]


def test_a_frame_of_a_field_with_a_reference_is_one_run_of_its_whole_chain(platform):
    platform, later = platform
    shutil.copy(later, platform.landing / later.name)
    result, _ = platform.tick(raw_arrival_sensor)
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    assert request.job_name == "observation_job" and request.run_key.startswith("calibrate:")

    # calibrated, the difference not made yet, while its chain's run is still under way: nothing to ask for
    key = request.partition_key
    platform.instance.add_dynamic_partitions("observations", [key])  # as the daemon does with the tick's result
    assert defs.resolve_job_def("calibrate_job").execute_in_process(
        instance=platform.instance, partition_key=key, resources=platform.resources).success
    chain = platform.instance.create_run_for_job(
        defs.resolve_job_def("observation_job"), tags={PARTITION_NAME_TAG: key}, status=DagsterRunStatus.STARTED)
    result, _ = platform.tick(reference_and_difference_sensor)
    assert key not in [r.partition_key for r in getattr(result, "run_requests", [])]

    # that run gone (it ended without its difference): the difference is asked for on its own
    platform.instance.delete_run(chain.run_id)
    result, _ = platform.tick(reference_and_difference_sensor)
    assert [(r.job_name, r.partition_key) for r in result.run_requests if r.partition_key == key] == \
        [("difference_job", key)]
