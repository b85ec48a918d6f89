"""schemathesis against the API's own OpenAPI spec: no generated input, authenticated or not, gives a 500."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from dagster_project.api.app import create_app
from dagster_project.catalog import Catalog
from tests.api.conftest import ADMIN
from tests.platform import make_settings

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    Catalog(url).migrate()
    app = create_app(make_settings(root, url, api_journal=root / "journal.sqlite"), replay=False, admin_token=ADMIN)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed(schema):
    assert len([op for op in schema.get_all_operations()]) >= 13


@pytest.mark.parametrize("token", [ADMIN, None], ids=["admin", "anonymous"])
def test_no_input_is_a_server_error(schema, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def call(case):
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, case.body, response.text[:300]))

        call()
    assert failures == []
