"""Staging: a request through the API becomes a staging_job run (by the staging sensor) that copies the files,
whole and checked, below the staging root, with its progress, its end in the operations ledger, and a cancel
honoured before or during the copy."""

import hashlib
import uuid

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, build_sensor_context

from dagster_project.catalog.schema import OperationRun, StagingStatus
from dagster_project.catalog.queries import observatory
from dagster_project.pipeline.staging import staging_job
from dagster_project.resources import resources_from_settings
from dagster_project.sensors.staging import evaluate_staging
from dagster_project.staging import stage
from tests.api.conftest import make_api
from tests.ingest.test_hostile_landing import Landing

START = {"obs_unit_id": 3, "instrument": "cam", "start_time": "2026-12-07T01:00:00Z"}


def landed_package(api, tmp_path, science) -> tuple[str, list[str]]:
    """A package of two frames, registered through the API and landed; its id and the files' names."""
    science = science[:2]
    package = api.client.post("/raw_data_package/", json={"name": "p"}, headers=api.telescope).json()["ids"]["id"]
    names = [f"night/F{n}.fits" for n in range(len(science))]
    files = [{"name": name, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "raw_data_package_id": package} for name, data in zip(names, science)]
    assert api.client.post("/raw_data_files/bulk", json={"files": files}, headers=api.telescope).status_code == 202
    api.wait_replayed()
    landing = Landing(tmp_path / "site", api.app.state.catalog)
    landing.config = type(landing.config)(**{**landing.config.__dict__, "store_dir": api.settings.store_dir})
    for name, data in zip(names, science):
        landing.put(name, data)
    assert sorted(o.status for o in landing.scan().outcomes) == ["accepted"] * len(science)
    return package, names


def staged(api, body: dict) -> str:
    answer = api.client.post("/staging/stage", json=body, headers=api.telescope)
    assert answer.status_code == 202, answer.text
    api.wait_replayed()
    return answer.json()["ids"]["id"]


def test_a_staging_request_is_copied_by_its_run(tmp_path, catalog_url, science):
    for api in make_api(tmp_path, catalog_url):
        package, names = landed_package(api, tmp_path, science)
        staging_id = staged(api, {"destination": "transfer/night-1", "raw_data_package_ids": [package]})
        assert api.client.get(f"/staging/status/{staging_id}", headers=api.reader).json()["status"] == "requested"

        resources = resources_from_settings(api.settings)
        with DagsterInstance.ephemeral() as instance:
            [request] = evaluate_staging(build_sensor_context(instance=instance), catalog=resources["catalog"])
            assert request.run_key == f"staging:{staging_id}"
            result = staging_job.execute_in_process(run_config=request.run_config, resources=resources,
                                                    instance=instance, tags=request.tags)
        assert result.success
        for name, data in zip(names, science[:2]):
            assert (api.settings.home / "staging" / "transfer" / "night-1" / name).read_bytes() == data
        status = api.client.get(f"/staging/status/{staging_id}", headers=api.reader).json()
        assert (status["status"], status["files_done"], status["files_total"]) == ("completed", 2, 2)
        assert status["bytes_done"] == status["bytes_total"] == sum(len(d) for d in science[:2])
        assert status["dagster_run_id"] == result.run_id and status["finished_at"]
        with api.app.state.catalog.session() as session:
            [operation] = session.scalars(sa.select(OperationRun).where(OperationRun.type == "staging.copy"))
            assert operation.outcome.value == "succeeded" and operation.summary_counts["success"] == 2
        with DagsterInstance.ephemeral() as instance:  # nothing more to stage
            assert not isinstance(evaluate_staging(build_sensor_context(instance=instance),
                                                   catalog=resources["catalog"]), list)


def test_a_cancel_before_the_run_and_during_the_copy(tmp_path, sqlite_url, science):
    for api in make_api(tmp_path, sqlite_url):
        package, names = landed_package(api, tmp_path, science)
        early = staged(api, {"destination": "a", "raw_data_package_ids": [package]})
        cancelled = api.client.delete(f"/staging/{early}", headers=api.telescope).json()
        assert (cancelled["status"], cancelled["status_reason"]) == ("cancelled", "cancelled before it started")
        assert api.client.delete(f"/staging/{early}", headers=api.telescope).status_code == 409

        during = staged(api, {"destination": "b", "raw_data_package_ids": [package]})
        catalog = api.app.state.catalog

        def cancel_after_the_first_file(files_done, files_total, bytes_done, bytes_total):
            if files_done == 1:
                assert api.client.delete(f"/staging/{during}", headers=api.telescope).json()["cancel_requested"]

        outcome = stage(catalog, uuid.UUID(during), api.settings.home / "staging", "run-1", "test",
                        on_progress=cancel_after_the_first_file)
        assert (outcome.status, outcome.files_done) == (StagingStatus.CANCELLED, 1)
        staged_files = sorted(p.name for p in (api.settings.home / "staging" / "b").rglob("*") if p.is_file())
        assert staged_files == ["F0.fits"]  # the first whole, nothing of the second (not even a partial file)
        status = api.client.get(f"/staging/status/{during}", headers=api.reader).json()
        assert status["status"] == "cancelled" and "after 1 of 2 files" in status["status_reason"]


def test_a_request_whose_files_have_not_arrived_fails_saying_which(tmp_path, sqlite_url, science):
    for api in make_api(tmp_path, sqlite_url):
        file_id = api.client.post("/raw_data_files/", headers=api.telescope, json={
            "name": "late.fits", "size_bytes": 10, "sha256": "a" * 64}).json()["ids"]["ids"][0]
        staging_id = staged(api, {"destination": "c", "raw_data_file_ids": [file_id]})
        outcome = stage(api.app.state.catalog, uuid.UUID(staging_id), api.settings.home / "staging", "run-2", "test")
        assert outcome.status is StagingStatus.FAILED and "late.fits (registered)" in outcome.reason
        with api.app.state.catalog.session() as session:
            assert observatory.get_staging(session, uuid.UUID(staging_id)).status is StagingStatus.FAILED


@pytest.mark.parametrize("destination", ["../out", "/tmp/x", "a/../../b", ".hidden", ""])
def test_a_destination_outside_the_staging_root_is_refused(tmp_path, sqlite_url, destination):
    for api in make_api(tmp_path, sqlite_url):
        answer = api.client.post("/staging/stage", headers=api.telescope,
                                 json={"destination": destination, "raw_data_file_ids": [str(uuid.uuid4())]})
        assert answer.status_code == 422 and "destination" in answer.json()["message"]


def test_a_request_needs_something_to_stage(tmp_path, sqlite_url):
    for api in make_api(tmp_path, sqlite_url):
        answer = api.client.post("/staging/stage", headers=api.telescope, json={"destination": "d"})
        assert answer.status_code == 422 and "raw_data_package_ids or raw_data_file_ids" in answer.json()["message"]
