"""The operations API as a telescope and a reader use it: buffered writes answered 202 and applied, smart reads,
idempotent retries, 409 for a reused key, 401/403, 422 naming the field, 413, package size limit and
finalize."""

import hashlib
import uuid

import pytest
import sqlalchemy as sa

from dagster_project.catalog.schema.observatory import ExecutedObsUnit, RegisteredRawFile
from tests.api.conftest import bearer

START = {"obs_unit_id": 42, "instrument": "cam", "telescope": "T1", "start_time": "2026-12-07T01:00:00Z",
         "obs_metadata": {"program": "survey"}}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def started(api, **changes) -> str:
    answer = api.client.post("/executed_obs_units/start", json={**START, **changes}, headers=api.telescope)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "buffered"
    return answer.json()["ids"]["id"]


def test_a_unit_started_and_finished_is_applied_and_read_back(api):
    unit_id = started(api)
    finish = api.client.put(f"/executed_obs_units/{unit_id}/finish", headers=api.telescope,
                            json={"status": "succeeded", "end_time": "2026-12-07T01:30:00+00:00"})
    assert finish.status_code == 202
    api.wait_replayed()
    [unit] = api.client.get("/executed_obs_units/42", headers=api.reader).json()
    assert (unit["id"], unit["status"], unit["end_time"], unit["buffered"]) == (
        unit_id, "succeeded", "2026-12-07T01:30:00Z", False)
    assert unit["obs_metadata"] == {"program": "survey"} and unit["telescope"] == "T1"
    with api.app.state.catalog.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ExecutedObsUnit)) == 1
    assert api.client.get("/executed_obs_units/43", headers=api.reader).json() == []


def test_reads_see_writes_still_buffered(tmp_path, sqlite_url):
    from tests.api.conftest import make_api

    for api in make_api(tmp_path, sqlite_url, replay=False):  # no replayer: every write stays in the journal
        unit_id = started(api)
        [unit] = api.client.get("/executed_obs_units/42", headers=api.reader).json()
        assert (unit["id"], unit["status"], unit["buffered"]) == (unit_id, "started", True)
        api.client.put(f"/executed_obs_units/{unit_id}/finish", headers=api.telescope,
                       json={"status": "aborted", "end_time": "2026-12-07T01:05:00Z", "reason": "clouds"})
        [unit] = api.client.get("/executed_obs_units/42", headers=api.reader).json()
        assert (unit["status"], unit["status_reason"]) == ("aborted", "clouds")
        with api.app.state.catalog.session() as session:  # nothing of it in the catalog
            assert session.scalar(sa.select(sa.func.count()).select_from(ExecutedObsUnit)) == 0


def test_a_retry_with_the_same_key_is_the_same_write_and_other_content_is_409(sqlite_api):
    api = sqlite_api
    headers = {**api.telescope, "Idempotency-Key": "obs-42-start"}
    first = api.client.post("/executed_obs_units/start", json=START, headers=headers).json()
    again = api.client.post("/executed_obs_units/start", json=START, headers=headers).json()
    assert again["ids"] == first["ids"] and again["write_id"] == first["write_id"]
    assert (first["new"], again["new"]) == (True, False)
    other = api.client.post("/executed_obs_units/start", json={**START, "obs_unit_id": 43}, headers=headers)
    assert other.status_code == 409 and "obs-42-start" in other.json()["detail"]
    # without a key, the identical request is the same write too
    plain = [api.client.post("/executed_obs_units/start", json={**START, "obs_unit_id": 44},
                             headers=api.telescope).json() for _ in range(2)]
    assert plain[0]["ids"] == plain[1]["ids"] and not plain[1]["new"]
    api.wait_replayed()
    with api.app.state.catalog.session() as session:
        assert sorted(session.scalars(sa.select(ExecutedObsUnit.obs_unit_id))) == [42, 44]


def test_keys_are_each_clients_own(sqlite_api):
    api = sqlite_api
    other = api.client.post("/tokens", json={"name": "telescope-2", "scopes": ["telescope"]}, headers=api.admin)
    headers_2 = {**bearer(other.json()["token"]), "Idempotency-Key": "k"}
    one = api.client.post("/executed_obs_units/start", json=START, headers={**api.telescope, "Idempotency-Key": "k"})
    two = api.client.post("/executed_obs_units/start", json={**START, "obs_unit_id": 9}, headers=headers_2)
    assert one.status_code == two.status_code == 202 and one.json()["ids"] != two.json()["ids"]


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": "Basic abc"}, 401)])
def test_no_valid_token_is_401(sqlite_api, headers, expected):
    api = sqlite_api
    assert api.client.post("/executed_obs_units/start", json=START, headers=headers).status_code == expected
    assert api.client.get("/executed_obs_units/42", headers=headers).status_code == expected
    assert api.client.get("/openapi.json").status_code == 200 and api.client.get("/health").status_code == 200


def test_scopes_are_enforced(sqlite_api):
    api = sqlite_api
    denied = api.client.post("/executed_obs_units/start", json=START, headers=api.reader)
    assert denied.status_code == 403 and "do not allow writes" in denied.json()["detail"]
    assert api.client.post("/tokens", json={"name": "x", "scopes": ["admin"]}, headers=api.telescope).status_code == 403
    assert api.client.get("/dead_letters", headers=api.reader).status_code == 403
    assert api.client.get("/executed_obs_units/42", headers=api.telescope).status_code == 200
    revoked = api.client.delete("/tokens/reader-1", headers=api.admin)
    assert revoked.status_code == 204
    assert api.client.get("/executed_obs_units/42", headers=api.reader).status_code == 401


@pytest.mark.parametrize(("body", "field"), [
    ({**START, "obs_unit_id": -1}, "obs_unit_id"),
    ({**START, "start_time": "2026-12-07T01:00:00"}, "start_time"),  # no time zone
    ({**START, "instrument": ""}, "instrument"),
    ({**START, "surprise": 1}, "surprise"),
    ({k: v for k, v in START.items() if k != "instrument"}, "instrument"),
])
def test_a_bad_start_is_422_naming_the_field(sqlite_api, body, field):
    answer = sqlite_api.client.post("/executed_obs_units/start", json=body, headers=sqlite_api.telescope)
    assert answer.status_code == 422
    assert field in answer.json()["message"]
    assert [field] == [e["loc"][-1] for e in answer.json()["detail"]]
    assert sqlite_api.app.state.journal.counts()["pending"] == 0


@pytest.mark.parametrize(("name", "reason"), [
    ("../etc/passwd.fits", "path relative to the landing folder"), ("/abs/F.fits", "path relative"),
    ("a/.hidden.fits", "path relative"), ("F001.png", "must end in one of"), ("a//b.fits", "path relative"),
    ("F\x00.fits", "path relative")])
def test_a_file_name_outside_the_landing_folder_is_refused(sqlite_api, name, reason):
    answer = sqlite_api.client.post("/raw_data_files/", headers=sqlite_api.telescope,
                                    json={"name": name, "size_bytes": 1, "sha256": sha("x")})
    assert answer.status_code == 422 and reason in answer.json()["message"]
    assert "name" in answer.json()["message"]


def test_a_body_over_the_limit_is_413(tmp_path, sqlite_url):
    from tests.api.conftest import make_api

    for api in make_api(tmp_path, sqlite_url, api_max_body_bytes=2048):
        files = [{"name": f"F{n:04d}.fits", "size_bytes": 1, "sha256": sha(str(n))} for n in range(100)]
        answer = api.client.post("/raw_data_files/bulk", json={"files": files}, headers=api.telescope)
        assert answer.status_code == 413 and "over the limit of 2048 bytes" in answer.json()["detail"]
        assert api.app.state.journal.counts()["pending"] == 0


def test_files_registered_in_a_package_and_its_size_limit(tmp_path, sqlite_url):
    from tests.api.conftest import make_api

    for api in make_api(tmp_path, sqlite_url, package_max_bytes=1000):
        unit_id = started(api)
        package = api.client.post("/raw_data_package/", json={"name": "night-1", "executed_obs_unit_id": unit_id},
                                  headers=api.telescope).json()["ids"]["id"]
        files = [{"name": f"night/F{n}.fits", "size_bytes": 400, "sha256": sha(str(n)), "raw_data_package_id": package,
                  "executed_obs_unit_id": unit_id} for n in range(2)]
        bulk = api.client.post("/raw_data_files/bulk", json={"files": files}, headers=api.telescope)
        assert bulk.status_code == 202 and len(bulk.json()["ids"]["ids"]) == 2
        over = api.client.post("/raw_data_files/", headers=api.telescope,
                               json={**files[0], "name": "night/F9.fits", "sha256": sha("9")})
        assert over.status_code == 422 and "would hold 1200 bytes, over its limit of 1000" in over.json()["message"]
        assert "size_bytes" in over.json()["message"]
        again = api.client.post("/raw_data_files/", headers=api.telescope, json={**files[0], "sha256": sha("other")})
        assert again.status_code == 409 and "waiting to land: night/F0.fits" in again.json()["detail"]
        api.wait_replayed()
        record = api.client.get(f"/raw_data_package/{package}", headers=api.reader).json()
        assert (record["status"], record["declared_bytes"], len(record["files"])) == ("building", 800, 2)
        [unit] = api.client.get("/executed_obs_units/42", headers=api.reader).json()
        assert unit["raw_data_packages"] == [package] and sorted(unit["raw_data_files"]) == sorted(
            bulk.json()["ids"]["ids"])
        refused = api.client.put(f"/raw_data_package/{package}/finalize", headers=api.telescope)
        assert refused.status_code == 409 and "2 of 2 files not arrived" in refused.json()["detail"]
        file_id = bulk.json()["ids"]["ids"][0]
        assert api.client.get(f"/raw_data_files/{file_id}", headers=api.reader).json()["status"] == "registered"
        assert api.client.get(f"/raw_data_files/{uuid.uuid4()}", headers=api.reader).status_code == 404
        with api.app.state.catalog.session() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(RegisteredRawFile)) == 2


def test_a_write_that_cannot_apply_is_a_dead_letter_an_admin_can_read(sqlite_api):
    api = sqlite_api
    answer = api.client.put(f"/executed_obs_units/{uuid.uuid4()}/finish", headers=api.telescope,
                            json={"status": "failed", "end_time": "2026-12-07T01:05:00Z"})
    assert answer.status_code == 202
    counts = api.wait_replayed()
    assert counts["dead"] == 1
    [dead] = api.client.get("/dead_letters", headers=api.admin).json()
    assert dead["kind"] == "executed_obs_unit.finish" and "no executed observation unit" in dead["reason"]
    assert api.client.get("/health").json()["journal"]["dead"] == 1
