"""The operations API on a test catalog: ``api`` gives a TestClient (the replayer running beside it), the admin
token and a telescope's and a reader's tokens."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dagster_project.api.app import create_app
from dagster_project.catalog import Catalog
from dagster_project.simulation.night import simulate_night
from tests.platform import make_settings

ADMIN = "admin-token-for-tests-0123456789"


@dataclass
class Api:
    client: TestClient
    settings: object
    telescope: dict[str, str]
    reader: dict[str, str]
    admin: dict[str, str]

    @property
    def app(self):
        return self.client.app

    def wait_replayed(self, timeout: float = 20.0) -> dict[str, int]:
        """Until the journal has nothing pending (the replayer is woken by each write)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.app.state.journal.counts()
            if counts["pending"] == 0:
                return counts
            time.sleep(0.02)
        raise AssertionError(f"still pending after {timeout} s: {self.app.state.journal.counts()}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_api(root: Path, database_url: str, replay: bool = True, **overrides) -> Iterator[Api]:
    settings = make_settings(root, database_url, api_journal=root / "api" / "journal.sqlite", **overrides)
    Catalog(database_url).migrate()  # as a platform that has run would have it (the replayer would migrate it too)
    app = create_app(settings, replay=replay, admin_token=ADMIN)
    with TestClient(app) as client:
        tokens = {}
        for name, scope in (("telescope-1", "telescope"), ("reader-1", "reader")):
            answer = client.post("/tokens", json={"name": name, "scopes": [scope]}, headers=bearer(ADMIN))
            assert answer.status_code == 201, answer.text
            tokens[scope] = bearer(answer.json()["token"])
        yield Api(client, settings, tokens["telescope"], tokens["reader"], bearer(ADMIN))


@pytest.fixture(scope="module")
def science(tmp_path_factory) -> list[bytes]:
    """The bytes of three simulated science frames of one field (128 px)."""
    out = tmp_path_factory.mktemp("night")
    simulate_night(out, n_fields=1, n_epochs=3, size=128, n_bias=0, n_flats=0, transients_per_frame=1, seed=8)
    return [p.read_bytes() for p in sorted(out.glob("*_sci_*.fits"))]


@pytest.fixture
def api(tmp_path, catalog_url) -> Iterator[Api]:
    yield from make_api(tmp_path, catalog_url)


@pytest.fixture
def sqlite_api(tmp_path, sqlite_url) -> Iterator[Api]:
    yield from make_api(tmp_path, sqlite_url)
