"""A file registered through the API and then landing is one RawDataFile: verified against its declared size and
sha256 (or quarantined with the mismatch as its reason), linked to its registration, its unit and package; a
registered file that does not land shows as missing, and is still taken when it lands late."""

import dataclasses
import hashlib


from dagster_project.catalog.schema import RawFileStatus
from tests.api.conftest import make_api
from tests.ingest.test_hostile_landing import Landing

START = {"obs_unit_id": 7, "instrument": "cam", "start_time": "2026-12-07T01:00:00Z"}


def declared(name: str, data: bytes, **links) -> dict:
    return {"name": name, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **links}


def test_registered_files_are_verified_when_they_land(tmp_path, catalog_url, science):
    for api in make_api(tmp_path, catalog_url):
        unit = api.client.post("/executed_obs_units/start", json=START, headers=api.telescope).json()["ids"]["id"]
        good, bad = [api.client.post("/raw_data_package/", json={"name": n, "executed_obs_unit_id": unit},
                                     headers=api.telescope).json()["ids"]["id"] for n in ("good", "bad")]
        files = [declared("n1/F1.fits", science[0], executed_obs_unit_id=unit, raw_data_package_id=good),
                 declared("n1/F2.fits", science[1], executed_obs_unit_id=unit, raw_data_package_id=good),
                 # declared as the second frame's bytes, but the third lands under its name
                 declared("n1/F3.fits", science[1], executed_obs_unit_id=unit, raw_data_package_id=bad)]
        ids = api.client.post("/raw_data_files/bulk", json={"files": files}, headers=api.telescope).json()["ids"]["ids"]
        api.wait_replayed()

        landing = Landing(tmp_path / "site", api.app.state.catalog)
        for name, data in (("n1/F1.fits", science[0]), ("n1/F2.fits", science[1]), ("n1/F3.fits", science[2])):
            landing.put(name, data)
        result = landing.scan()
        assert sorted(o.status for o in result.outcomes) == ["accepted", "accepted", "quarantined"]

        first = api.client.get(f"/raw_data_files/{ids[0]}", headers=api.reader).json()
        assert (first["status"], first["raw_file_status"]) == ("arrived", "accepted")
        assert first["observation_id"] and first["raw_data_file_id"]
        third = api.client.get(f"/raw_data_files/{ids[2]}", headers=api.reader).json()
        assert third["status"] == "mismatched" and third["raw_file_status"] == "quarantined"
        assert f"not the file registered as {ids[2]} through the operations API" in third["status_reason"]
        [quarantined] = landing.by_status(RawFileStatus.QUARANTINED)
        assert "sha256" in quarantined.quarantine_reason and str(quarantined.id) == third["raw_data_file_id"]
        assert len(landing.rows()) == 3  # one RawDataFile per landed file, none made by the registration

        [detail] = api.client.get("/executed_obs_units/7", headers=api.reader).json()
        assert sorted(detail["observations"]) == sorted([first["observation_id"],
                                                         api.client.get(f"/raw_data_files/{ids[1]}",
                                                                        headers=api.reader).json()["observation_id"]])
        complete = api.client.put(f"/raw_data_package/{good}/finalize", headers=api.telescope)
        assert complete.status_code == 200 and complete.json()["status"] == "complete"
        assert complete.json()["finalized_at"]
        refused = api.client.put(f"/raw_data_package/{bad}/finalize", headers=api.telescope)
        assert refused.status_code == 409 and "n1/F3.fits (mismatched)" in refused.json()["detail"]
        late = api.client.post("/raw_data_files/", headers=api.telescope,
                               json=declared("n1/F4.fits", science[2], raw_data_package_id=good))
        assert late.status_code == 422 and "is complete: it takes no more files" in late.json()["message"]


def test_a_registered_file_that_does_not_land_is_missing_until_it_does(tmp_path, sqlite_url, science):
    for api in make_api(tmp_path, sqlite_url):
        file_id = api.client.post("/raw_data_files/", json=declared("F9.fits", science[0]),
                                  headers=api.telescope).json()["ids"]["ids"][0]
        api.wait_replayed()
        landing = Landing(tmp_path / "site", api.app.state.catalog)
        landing.config = dataclasses.replace(landing.config, missing_after_seconds=0.0)
        landing.scan()
        record = api.client.get(f"/raw_data_files/{file_id}", headers=api.reader).json()
        assert record["status"] == "missing" and "not landed within 0 s" in record["status_reason"]
        landing.put("F9.fits", science[0])
        assert [o.status for o in landing.scan().outcomes] == ["accepted"]
        record = api.client.get(f"/raw_data_files/{file_id}", headers=api.reader).json()
        assert (record["status"], record["status_reason"], record["raw_file_status"]) == ("arrived", None, "accepted")
