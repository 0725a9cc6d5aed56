"""Schemathesis against the API's own OpenAPI: generated requests never cause a server error,
and documented responses match their schemas. Real parts behind it (model server, Chroma, SQLite).

Generated strings include NUL (U+0000), which PostgreSQL's text columns cannot hold: every such case
must be a 4xx from validation, never a database error (tests/test_security_fuzz.py also drives the
fuzz against a PostgreSQL answer log)."""

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


class FuzzCount(int):
    """The number of cases sent; ``with_nul``: how many carried a NUL byte in their body, query or path."""

    with_nul: int = 0


def _has_nul(kwargs: dict) -> bool:
    text = repr(kwargs)  # a NUL shows as \\x00 in a repr; in a URL it is percent-encoded
    return "\\x00" in text or "%00" in text


def run_fuzz(harness, examples: int, headers: dict[str, str]) -> FuzzCount:
    """Drive every operation through the in-process app; returns the number of cases sent."""
    schema = schemathesis.openapi.from_dict(harness.client.app.openapi())
    schema.config.generation.update(allow_x00=True)  # the default, made explicit: NULs are part of the fuzz
    sent = 0
    with_nul = 0
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
            nonlocal sent, with_nul
            kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
            response = harness.client.request(**kwargs)
            sent += 1
            with_nul += _has_nul(kwargs)
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            except Exception as exc:  # collect all, report together
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {exc}"[:500])

        check()
    assert not failures, "\n".join(failures[:20])
    count = FuzzCount(sent)
    count.with_nul = with_nul
    return count


def test_generated_requests_never_cause_server_errors(api):
    sent = run_fuzz(api, EXAMPLES_PER_OPERATION, api.headers(api.admin_key))
    assert sent >= EXAMPLES_PER_OPERATION * 5
    assert sent.with_nul > 0, "no generated case carried a NUL byte"
