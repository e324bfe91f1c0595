"""Property-based fuzzing of the whole API from its OpenAPI schema (schemathesis): with a valid
key, no generated request may get a 5xx or a response that violates the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUTH, running_server

schemathesis = pytest.importorskip("schemathesis")
pytestmark = pytest.mark.e2e
WITHOUT_PULL_MANAGER = {"/api/pull", "/api/delete"}
"""Ollama's pull and delete reach the model hub and the models folder: they are tested against the
fake hub (tests/core/models, tests/e2e/test_ollama_api.py), not fuzzed at the real one."""


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[Any]:
    with running_server(
        tmp_path_factory.mktemp("fuzz"),
        models_folder,
        resource_manager={"pools": {"default": {"limit": 4, "queue_size": 64}}},
    ) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        schema.config.base_url = server.url
        yield schema


def test_no_server_errors_and_responses_match_the_schema(api_schema: Any) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    # names are plain strings in the schema but must also be safe and known: a 400/404 for a
    # schema-valid but unknown or unsafe name is the right answer, not a failure
    excluded = [positive_data_acceptance]

    checked = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.path in WITHOUT_PULL_MANAGER:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers=AUTH, excluded_checks=excluded)

        run()
        checked += 1
    assert checked >= 20
