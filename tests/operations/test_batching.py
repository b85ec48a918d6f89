"""Several partitions per run: each partition is built, materialized and checked on its own."""

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DagsterEventType,
    Failure,
    StaticPartitionsDefinition,
    asset,
    MaterializeResult,
    instance_for_test,
    materialize,
)
from dagster_project.operations.mirror import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG

from dagster_project.pipeline.batching import PartitionOutput, batch_failure, materialize_partitions
from dagster_project.operations.mirror import run_partition_keys
from dagster_project.settings import Settings

KEYS = ["a", "b", "c", "d"]
built: list[str] = []
#: partitions whose build raises: b for good, c retryably
unreadable: set[str] = set()


@asset(partitions_def=StaticPartitionsDefinition(KEYS), check_specs=[AssetCheckSpec("small", asset="frames")])
def frames(context: AssetExecutionContext) -> MaterializeResult:
    def build(key: str) -> PartitionOutput:
        built.append(key)
        if key in unreadable:
            raise Failure(f"frame {key} is unreadable", allow_retries=key != "b")
        return PartitionOutput({"letter": key, "ordinal": ord(key)},
                               [AssetCheckResult(check_name="small", passed=key != "d")])
    return materialize_partitions(context, build)


@pytest.fixture(autouse=True)
def fresh_state():
    built.clear()
    unreadable.clear()


def _range(start: str, end: str) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


def _materializations(instance, run_id):
    return [e.asset_materialization for e in instance.all_logs(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)]


def test_a_single_partition_run_reports_exactly_what_its_build_returns():
    with instance_for_test() as instance:
        result = materialize([frames], instance=instance, partition_key="a")
        (materialization,) = _materializations(instance, result.run_id)
        assert materialization.partition == "a" and materialization.metadata["letter"].value == "a"
        assert "batch_size" not in materialization.metadata
        (check,) = result.get_asset_check_evaluations()
        assert check.passed
    assert built == ["a"]


def test_a_batch_gives_each_partition_its_own_materialization_and_each_check_once():
    with instance_for_test() as instance:
        result = materialize([frames], instance=instance, tags=_range("a", "d"))
        assert result.success and built == KEYS
        metadata = {m.partition: m.metadata for m in _materializations(instance, result.run_id)}
        assert {k: (v["letter"].value, v["ordinal"].value, v["batch_size"].value) for k, v in metadata.items()} == {
            key: (key, ord(key), 4) for key in KEYS}
        (check,) = result.get_asset_check_evaluations()
        assert not check.passed  # "d" is not small
        assert check.metadata["partitions_checked"].value == 4
        assert check.metadata["failed_partitions"].value == "d"


def test_a_batch_with_bad_partitions_builds_the_others_then_fails_naming_them():
    unreadable.update({"b", "c"})
    with instance_for_test() as instance:
        result = materialize([frames], instance=instance, tags=_range("a", "d"), raise_on_error=False)
        assert not result.success
        assert built == KEYS  # every partition was attempted, in order
        (failure,) = [e for e in result.all_events if e.event_type is DagsterEventType.STEP_FAILURE]
        message = failure.step_failure_data.user_failure_data.description
        assert message.startswith("2 of 4 partitions failed (the others are done)")
        assert "b: frame b is unreadable" in message and "c: frame c is unreadable" in message
        assert _materializations(instance, result.run_id) == []  # Dagster records a step all or nothing
        assert instance.get_latest_materialization_event(AssetKey("frames")) is None


def test_a_batch_failure_is_retryable_unless_every_failure_said_no():
    final = Failure("blocked", allow_retries=False)
    assert not batch_failure({"x": final, "y": final}, 3).allow_retries
    assert batch_failure({"x": final, "y": OSError("disk full")}, 3).allow_retries


def test_the_batch_size_setting_must_be_positive(monkeypatch):
    monkeypatch.setenv("ASTRO_BACKFILL_BATCH", "0")
    with pytest.raises(ValueError, match="ASTRO_BACKFILL_BATCH must be a positive integer"):
        Settings.from_env()
    monkeypatch.setenv("ASTRO_BACKFILL_BATCH", "8")
    assert Settings.from_env().backfill_batch_size == 8


def test_a_range_run_counts_for_each_of_its_partitions():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["k1", "k2", "k3", "k4"])
        assert run_partition_keys(instance, _range("k2", "k4")) == ["k2", "k3", "k4"]
        assert run_partition_keys(instance, {PARTITION_NAME_TAG: "k1"}) == ["k1"]
        assert run_partition_keys(instance, _range("gone-1", "gone-2")) == ["gone-1", "gone-2"]
        assert run_partition_keys(instance, {}) == []
