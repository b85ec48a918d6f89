"""An asset backfill is created through Dagster's public GraphQL mutation, and a refusal says why."""

import pytest
from dagster import DagsterInstance

from dagster_project.cli.backfill import BackfillNotLaunched, submit_asset_backfill
from dagster_project.pipeline.jobs import JOB_ASSETS


@pytest.fixture
def instance(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    with DagsterInstance.get() as instance:
        yield instance


def test_backfill_is_added_to_the_instance_with_its_partitions_tags_and_title(instance):
    instance.add_dynamic_partitions("observations", ["obs-1", "obs-2"])
    backfill_id = submit_asset_backfill(instance, JOB_ASSETS["difference_job"], ["obs-1", "obs-2"],
                                        tags={"astro/operation": "7"}, title="difference: 2 observations")
    (backfill,) = instance.get_backfills()
    assert backfill.backfill_id == backfill_id
    assert backfill.title == "difference: 2 observations"
    assert backfill.tags["astro/operation"] == "7"
    assert backfill.is_asset_backfill
    targeted = {(key.to_user_string(), partition)
                for key, partition in backfill.asset_backfill_data.target_subset.iterate_asset_partitions()}
    assert targeted == {(name, partition) for name in JOB_ASSETS["difference_job"] for partition in ("obs-1", "obs-2")}


def test_a_refused_backfill_raises_with_dagsters_reason(instance):
    with pytest.raises(BackfillNotLaunched, match="no_such_asset"):
        submit_asset_backfill(instance, ("no_such_asset",), ["obs-1"], tags={}, title="nothing")
    assert instance.get_backfills() == []
