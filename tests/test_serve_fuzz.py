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


# The training routes, on a served folder (a finished run, `tiny`). A run of the folder is held by this
# process, so the server counts one training process busy, and with no queue every valid request to
# train is refused (503): the fuzz starts no process.
@pytest.fixture(scope="module")
def training_schema(tiny_run, tiny_idx_dir, tmp_path_factory):
    import shutil

    from mnistlab.base.config import recipe
    from mnistlab.commands.jobs import Bounds
    from mnistlab.core import runs

    folder = tmp_path_factory.mktemp("served")
    shutil.copytree(tiny_run, folder / "tiny")
    held = runs.create(folder / "held-by-the-fuzz-test-0x5eed", recipe("seed", device="cpu"))
    app = create_app(folder=folder, data_dir=tiny_idx_dir, bounds=Bounds(jobs=1, queue=0))
    yield schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/api/(runs|events|training)")
    held.close()


training = schemathesis.pytest.from_fixture("training_schema")


@pytest.mark.slow
@training.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_training_api_never_answers_5xx_nor_outside_its_description(case):
    response = case.call()
    if response.status_code == 503:  # the one refusal expected here: busy, no queue
        assert "training process is busy" in response.json()["error"]
        return
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                             response_schema_conformance])
