"""The API fuzzed from its own OpenAPI document (schemathesis): whatever the request, no 5xx and no
answer outside the documented statuses, content types and schemas."""

import pytest

pytest.importorskip("fastapi", reason="mnistlab serve needs the serve extra: pip install -e '.[serve]'")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from mnistlab.commands.serve import create_app, load_models  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tiny_run):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(load_models([tiny_run])))


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_never_answers_5xx_nor_outside_its_description(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
