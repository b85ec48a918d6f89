"""Prompt processing: a frame whose field has a reference is requested as one run of its whole chain, first
in the run queue; no separate difference is asked for while that run is under way, and no reprocessing."""

import dataclasses
import os
import shutil

import pytest
from dagster import DagsterRunStatus, SensorResult, instance_for_test

from dagster_project.cli.runner import process_folder
from dagster_project.definitions import defs
from dagster_project.catalog.queries import PlannedRun
from dagster_project.operations.mirror import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster_project.operations.mirror import PARTITION_NAME_TAG, RANGE_TAGS
from dagster_project.sensors.raw_arrival import batched
from dagster_project.pipeline.jobs import LANE_TAG, PROMPT_LANE, REDO_LANE
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

raw_arrival_sensor = defs.resolve_sensor_def("raw_arrival_sensor")
reference_and_difference_sensor = defs.resolve_sensor_def("reference_and_difference_sensor")

pytestmark = pytest.mark.slow


@pytest.fixture
def platform(tmp_path, sqlite_url):
    """A field whose first epoch is calibrated and has its reference; its three later epochs not landed yet."""
    night = tmp_path / "night"
    simulate_night(night, n_fields=1, n_epochs=4, size=512, n_bias=2, n_flats=2, transients_per_frame=2, seed=11)
    science = sorted(p for p in night.glob("*.fits") if "_sci_" in p.name)
    first = tmp_path / "first"
    first.mkdir()
    for path in sorted(night.glob("*.fits")):
        if path not in science[1:]:
            shutil.copy(path, first / path.name)
    with instance_for_test() as instance:
        # co-added references: the second frame makes a deeper one due (a redo)
        platform = make_platform(tmp_path, sqlite_url, instance, reference_max_frames=3)
        report = process_folder(first, platform.settings, instance=instance, wait=True, progress=lambda _: None)
        assert report.runs and not report.failed
        assert {r.job_name for r in report.runs} >= {"calibrate_job", "reference_job"}
        yield platform, science[1:]


def test_a_frame_of_a_field_with_a_reference_is_one_run_of_its_whole_chain(platform):
    platform, (later, *_) = platform
    shutil.copy(later, platform.landing / later.name)
    result, _ = platform.tick(raw_arrival_sensor)
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    assert request.job_name == "observation_job" and request.run_key.startswith("calibrate:")
    assert PROMPT_LANE.items() <= request.tags.items()

    # calibrated, the difference not made yet, while its chain's run is still under way: nothing to ask for
    key = request.partition_key
    platform.instance.add_dynamic_partitions("observations", [key])  # as the daemon does with the tick's result
    assert defs.resolve_job_def("calibrate_job").execute_in_process(
        instance=platform.instance, partition_key=key, resources=platform.resources).success
    chain = platform.instance.create_run_for_job(
        defs.resolve_job_def("observation_job"), tags={PARTITION_NAME_TAG: key, **PROMPT_LANE},
        status=DagsterRunStatus.STARTED)
    result, _ = platform.tick(reference_and_difference_sensor)
    assert getattr(result, "run_requests", []) == []  # nor the deeper reference: a prompt run is under way

    # that run gone (it ended without its difference): the difference is asked for on its own, as prompt
    # work, and the deeper reference as reprocessing
    platform.instance.delete_run(chain.run_id)
    result, _ = platform.tick(reference_and_difference_sensor)
    lanes = {(r.job_name, r.partition_key): r.tags[LANE_TAG] for r in result.run_requests}
    assert lanes == {("difference_job", key): PROMPT_LANE[LANE_TAG], ("reference_job", "F001-r"): REDO_LANE[LANE_TAG]}


def test_frames_found_together_share_runs_and_are_not_asked_for_again_while_those_run(platform):
    platform, later = platform
    for path in later:
        shutil.copy(path, platform.landing / path.name)
    result, _ = platform.tick(raw_arrival_sensor)
    (added,) = [r for r in result.dynamic_partitions_requests if r.partitions_def_name == "observations"]
    keys = list(added.partition_keys)
    assert len(keys) == 3 and len(result.run_requests) == 2  # ASTRO_PROMPT_RUNS: 2
    batch, single = sorted(result.run_requests, key=lambda r: r.partition_key or "")
    assert batch.partition_key is None and batch.job_name == single.job_name == "observation_job"
    assert (batch.tags[ASSET_PARTITION_RANGE_START_TAG], batch.tags[ASSET_PARTITION_RANGE_END_TAG]) == (keys[0], keys[1])
    assert single.partition_key == keys[2] and PROMPT_LANE.items() <= batch.tags.items()
    assert batch.run_config == {"execution": {"config": {"in_process": {}}}}  # the job's own, as a single run's

    # the batch under way (its frames not started yet: nothing of them in the catalog) is not asked for again
    platform.instance.add_dynamic_partitions("observations", keys)
    platform.instance.create_run_for_job(defs.resolve_job_def("observation_job"), status=DagsterRunStatus.STARTED,
                                         tags={k: batch.tags[k] for k in RANGE_TAGS})
    result, _ = platform.tick(raw_arrival_sensor)
    assert [r.partition_key for r in getattr(result, "run_requests", [])] == [keys[2]]


@pytest.mark.parametrize("runs, sizes", [(1, [4]), (2, [2, 2]), (3, [2, 2]), (8, [1, 1, 1, 1])])
def test_a_stretch_of_new_frames_is_split_into_at_most_the_given_runs(runs, sizes):
    requests = [PlannedRun("observation_job", f"k{i}", f"calibrate:k{i}", "new") for i in range(4)]
    groups = batched(requests, [r.partition_key for r in requests], runs)
    assert [len(g) for g in groups] == sizes and [p for g in groups for p in g] == requests


def test_only_neighbouring_new_frames_of_the_whole_chain_are_grouped():
    chain = [PlannedRun("observation_job", k, f"calibrate:{k}", "new") for k in ("a", "c", "d")]
    alone = PlannedRun("calibrate_job", "b", "calibrate:b", "new")  # its field has no reference yet
    retry = PlannedRun("observation_job", "z", "calibrate:z:a1", "failed")  # not new: its own run
    groups = batched([*chain, alone, retry], ["a", "b", "c", "d"], 2)
    assert sorted([[p.partition_key for p in g] for g in groups]) == [["a"], ["b"], ["c"], ["d"], ["z"]]


# --- a redo run's process yields the cores (resources/run_priority.py) ------------------------------------------

#: a run worker's life in miniature: one process, a thread already running (as NumPy's or a co-add's would be),
#: one run of a job whose op needs the run_priority resource; prints the nice values afterwards
_RUN_IN_ITS_OWN_PROCESS = """
import os, sys, threading
from dagster import job, op
from dagster_project.resources import RunPriorityResource

started, finish = threading.Event(), threading.Event()
niceness = {}
def worker():
    niceness["thread_id"] = threading.get_native_id()
    started.set()
    finish.wait()
thread = threading.Thread(target=worker)
thread.start()
started.wait()

@op(required_resource_keys={"run_priority"})
def step(context):
    niceness["in_step"] = os.getpriority(os.PRIO_PROCESS, 0)

@job
def one_step():
    step()

priority = RunPriorityResource(background_niceness=int(sys.argv[2]), own_process=sys.argv[3] == "own")
one_step.execute_in_process(resources={"run_priority": priority},
                            tags={"astro/lane": sys.argv[1]})
import gc
print(niceness["in_step"], os.getpriority(os.PRIO_PROCESS, niceness["thread_id"]), int(gc.get_freeze_count() > 0))
finish.set()
"""


@pytest.mark.parametrize("lane, niceness, process, expected", [
    ("redo", 19, "own", (19, 19, 1)), ("prompt", 19, "own", (0, 0, 1)), ("redo", 0, "own", (0, 0, 1)),
    ("redo", 19, "shared", (0, 0, 0))])
def test_a_redo_run_lowers_its_process_priority_and_a_prompt_run_does_not(lane, niceness, process, expected):
    """(nice of the step's thread, of a thread started before the run, whether the heap was frozen for the
    garbage collector); a shared process (the headless runner, Celery workers) is left as it is."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _RUN_IN_ITS_OWN_PROCESS, lane, str(niceness), process],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert tuple(int(v) for v in out.stdout.split()[-3:]) == expected


def test_every_asset_asks_for_the_run_priority_and_only_own_process_runs_lower_it(tmp_path, sqlite_url):
    from dagster_project.resources import resources_from_settings
    from dagster_project.settings import Settings

    assets = [a for a in defs.assets if hasattr(a, "required_resource_keys")]
    assert assets and all("run_priority" in a.required_resource_keys for a in assets)
    with instance_for_test() as instance:
        platform = make_platform(tmp_path, sqlite_url, instance)
        priority = platform.resources["run_priority"]
        assert priority.own_process and priority.background_niceness == Settings.background_niceness == 19
    settings = platform.settings
    assert not resources_from_settings(settings, own_process_per_run=False)["run_priority"].own_process
    assert not resources_from_settings(dataclasses.replace(settings, executor="celery"))["run_priority"].own_process


def test_every_asset_has_its_partition_build_registered_for_runs_without_dagster():
    from dagster_project.pipeline.asset_factory import PARTITION_BUILDS, resource_keys

    names = {key.to_user_string() for a in defs.assets for key in a.keys}
    assert names and set(PARTITION_BUILDS) == names  # benchmarks/night_throughput.py runs these builds bare
    assert all(resource_keys(build) for build in PARTITION_BUILDS.values())
