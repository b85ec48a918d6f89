"""The names ``operations/mirror.py`` writes out because Dagster defines them in private modules only
(tags, run and backfill statuses, the error type it reads) still match Dagster's; and those it writes out
because they are the pipeline's, which the operations layer does not import, still match the pipeline's.

The test may import Dagster's private modules; ``dagster_project`` may not (tests/test_house.py).
"""

from dagster._core.definitions import data_version
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.storage import dagster_run, tags
from dagster._utils.error import SerializableErrorInfo

from dagster_project.operations import mirror
from dagster_project.pipeline import metadata, partitions


def test_tags_match_dagster():
    assert mirror.PARTITION_NAME_TAG == tags.PARTITION_NAME_TAG
    assert mirror.ASSET_PARTITION_RANGE_START_TAG == tags.ASSET_PARTITION_RANGE_START_TAG
    assert mirror.ASSET_PARTITION_RANGE_END_TAG == tags.ASSET_PARTITION_RANGE_END_TAG
    assert mirror.RUN_KEY_TAG == tags.RUN_KEY_TAG
    assert mirror.CODE_VERSION_TAG == data_version.CODE_VERSION_TAG
    assert mirror.DATA_VERSION_TAG == data_version.DATA_VERSION_TAG


def test_run_statuses_match_dagster():
    assert mirror.FINISHED_STATUSES == tuple(dagster_run.FINISHED_STATUSES)
    assert set(mirror.NOT_FINISHED_STATUSES) == set(dagster_run.NOT_FINISHED_STATUSES)


def test_backfill_statuses_match_dagster():
    assert mirror.BACKFILL_TERMINAL_STATUSES == {status.value for status in BULK_ACTION_TERMINAL_STATUSES}
    assert mirror.BACKFILL_CANCELED_STATUSES == {BulkActionStatus.CANCELING.value, BulkActionStatus.CANCELED.value}
    assert mirror.BACKFILL_CANCELED_STATUSES <= {status.value for status in BulkActionStatus}


def test_error_info_is_what_dagster_hands_over():
    error = SerializableErrorInfo("package.module.PSFError: only 3 stars\n", [], "PSFError")
    wrapped = SerializableErrorInfo("step failed", [], "DagsterExecutionStepExecutionError", cause=error)
    assert mirror.describe_error(wrapped, "fallback") == ("step.psf_error", "only 3 stars")


def test_pipeline_names_match_the_pipeline():
    assert (mirror.ARTIFACT_PREFIX, mirror.INPUT_PREFIX) == (metadata.ARTIFACT_PREFIX, metadata.INPUT_PREFIX)
    dynamic = [value.name for value in vars(partitions).values()
               if isinstance(value, partitions.DynamicPartitionsDefinition)]
    assert sorted(mirror.DYNAMIC_PARTITIONS) == sorted(dynamic)
