"""The names ``sensors/ledger.py`` writes out because Dagster defines them in private modules only
(tags, run and backfill statuses, the error type it reads) still match Dagster's.

The test may import Dagster's private modules; ``dagster_project`` may not (tests/test_house.py).
"""

from dagster._core.definitions import data_version
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.storage import dagster_run, tags
from dagster._utils.error import SerializableErrorInfo

from dagster_project.sensors import ledger


def test_tags_match_dagster():
    assert ledger.PARTITION_NAME_TAG == tags.PARTITION_NAME_TAG
    assert ledger.ASSET_PARTITION_RANGE_START_TAG == tags.ASSET_PARTITION_RANGE_START_TAG
    assert ledger.ASSET_PARTITION_RANGE_END_TAG == tags.ASSET_PARTITION_RANGE_END_TAG
    assert ledger.RUN_KEY_TAG == tags.RUN_KEY_TAG
    assert ledger.CODE_VERSION_TAG == data_version.CODE_VERSION_TAG
    assert ledger.DATA_VERSION_TAG == data_version.DATA_VERSION_TAG


def test_run_statuses_match_dagster():
    assert ledger.FINISHED_STATUSES == tuple(dagster_run.FINISHED_STATUSES)
    assert set(ledger.NOT_FINISHED_STATUSES) == set(dagster_run.NOT_FINISHED_STATUSES)


def test_backfill_statuses_match_dagster():
    assert ledger.BACKFILL_TERMINAL_STATUSES == {status.value for status in BULK_ACTION_TERMINAL_STATUSES}
    assert ledger.BACKFILL_CANCELED_STATUSES == {BulkActionStatus.CANCELING.value, BulkActionStatus.CANCELED.value}
    assert ledger.BACKFILL_CANCELED_STATUSES <= {status.value for status in BulkActionStatus}


def test_error_info_is_what_dagster_hands_over():
    error = SerializableErrorInfo("package.module.PSFError: only 3 stars\n", [], "PSFError")
    wrapped = SerializableErrorInfo("step failed", [], "DagsterExecutionStepExecutionError", cause=error)
    assert ledger.describe_error(wrapped, "fallback") == ("step.psf_error", "only 3 stars")
