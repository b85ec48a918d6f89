"""Builders for ObservationResult tests."""

from datetime import datetime, timedelta, timezone

from dagster_project.catalog import queries
from dagster_project.catalog.queries import add_request, match_observation
from dagster_project.catalog.schema import CopiesMode, ObservationRequest
from tests.catalog import observation

T0 = datetime(2026, 11, 22, 1, 0, tzinfo=timezone.utc)


def request(session, name: str = "req", *, ra: float = 10.0, dec: float = 20.0, n_epochs: int = 2,
            copies_mode: CopiesMode = CopiesMode.SINGLE, copies_count: int | None = None, **fields) -> ObservationRequest:
    values = {"program": "test", "target_name": "target", "filter_band": "r", "exposure_time": 60.0,
              "n_epochs": n_epochs, "cadence_seconds": 3600.0, "samples_per_epoch": 1, "window_start": T0,
              "window_end": T0 + timedelta(days=1), **fields}
    return add_request(session, queries.get_or_create_survey(session, "test"), name=name, ra=ra, dec=dec,
                       copies_mode=copies_mode, copies_count=copies_count, **values)


def fulfilled_results(session, n_results: int, name: str = "req"):
    """A request of ``n_results`` epochs, each matched by its own frame (partially fulfilled)."""
    req = request(session, name, n_epochs=n_results, cadence_seconds=60.0)
    results = []
    for i in range(n_results):
        obs = observation(session, i, field_name=f"{name}F", ra=10.0, dec=20.0)
        obs.observation_time = T0 + timedelta(minutes=i + 1)
        result = match_observation(session, obs, {}, now=T0)
        assert result is not None
        results.append(result)
    return req, results
