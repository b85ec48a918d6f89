"""``cone_search_statement``: the SELECT ``cone_search`` sends (benchmarks/scale.py EXPLAINs it)."""

import sqlalchemy as sa

from dagster_project.catalog import Candidate, Observation
from dagster_project.catalog.healpix import cone_index_ranges
from dagster_project.catalog.queries.observations import cone_search_statement


def test_statement_bounds_the_index_by_the_cone_ranges():
    statement = cone_search_statement(Candidate, 150.0, 2.0, 30 / 3600, Candidate.snr > 5)
    compiled = str(statement.compile(compile_kwargs={"literal_binds": True}))
    ranges = cone_index_ranges(150.0, 2.0, 30 / 3600)
    assert ranges
    for start, stop in ranges:
        assert f"candidates.healpix_index >= {start}" in compiled
        assert f"candidates.healpix_index < {stop}" in compiled
    assert "candidates.snr > 5" in compiled


def test_whole_sky_has_no_index_bound():
    statement = cone_search_statement(Observation, 0.0, 0.0, 180.0)
    assert isinstance(statement, sa.Select)
    assert "WHERE" not in str(statement.compile())
