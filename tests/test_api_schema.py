"""Schemathesis against the API's own OpenAPI: generated requests never cause a server error,
and documented responses match their schemas. Real parts behind it (model server, Chroma, SQLite)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = int(os.environ.get("CANDOR_TEST_FUZZ_EXAMPLES", "20"))


def run_fuzz(harness, examples: int, headers: dict[str, str]) -> int:
    """Drive every operation through the in-process app; returns the number of cases sent."""
    schema = schemathesis.openapi.from_dict(harness.client.app.openapi())
    sent = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        def check(case):
            nonlocal sent
            kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
            response = harness.client.request(**kwargs)
            sent += 1
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            except Exception as exc:  # collect all, report together
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {exc}"[:500])

        check()
    assert not failures, "\n".join(failures[:20])
    return sent


def test_generated_requests_never_cause_server_errors(api):
    sent = run_fuzz(api, EXAMPLES_PER_OPERATION, api.headers(api.admin_key))
    assert sent >= EXAMPLES_PER_OPERATION * 5
