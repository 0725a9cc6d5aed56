"""Schemathesis over every route of the API's OpenAPI, at CI scale (at least 1,000 cases).

A TGI stub stands in for the model server (this tests input handling, not generation), so the
thousand cases cost seconds of CPU; Chroma, SQLite, the embedder and the tokenizer are real.
Checks: no 5xx, and every documented response matches its schema. Both an admin and a user key
drive the fuzz, so the role checks see generated input too. Generated strings include NUL bytes; a
smaller run drives the same fuzz against a PostgreSQL answer log, whose text columns refuse NUL (a
database error there must never surface as a 5xx).
"""

from __future__ import annotations

import math
import os

import pytest
from fixtures.api import make_harness
from stub_model_server import running_stub
from test_api_schema import run_fuzz

pytestmark = pytest.mark.slow

MIN_CASES = int(os.environ.get("CANDOR_TEST_FUZZ_CASES", "1000"))
POSTGRES_CASES = int(os.environ.get("CANDOR_TEST_FUZZ_POSTGRES_CASES", "300"))


@pytest.fixture
def stub_api(tmp_path, handbook_chroma, base_model_dir, shared_models):
    with running_stub() as stub:
        h = make_harness(tmp_path, handbook_chroma, stub.url, base_model_dir, shared_models)
        with h.client:
            yield h, stub


def test_at_least_a_thousand_generated_requests_cause_no_server_error(stub_api):
    h, stub = stub_api
    operations = sum(len(methods) for methods in h.client.app.openapi()["paths"].values())
    # operations with few parameters run out of distinct inputs early: ask the rich ones for more
    per_op = math.ceil(MIN_CASES * 1.8 / operations)
    sent = run_fuzz(h, per_op, h.headers(h.admin_key))
    sent += run_fuzz(h, math.ceil(MIN_CASES * 0.5 / operations), h.headers())
    assert sent >= MIN_CASES, f"only {sent} cases over {operations} operations"
    assert stub.calls > 0, "some generated questions passed the gate and reached the (stub) model server"


@pytest.mark.postgres
def test_generated_requests_against_a_postgres_answer_log_cause_no_server_error(
    tmp_path, handbook_chroma, base_model_dir, shared_models, postgres_url
):
    with running_stub() as stub:
        h = make_harness(tmp_path, handbook_chroma, stub.url, base_model_dir, shared_models, database_url=postgres_url)
        with h.client:
            operations = sum(len(methods) for methods in h.client.app.openapi()["paths"].values())
            sent = run_fuzz(h, math.ceil(POSTGRES_CASES / operations), h.headers(h.admin_key))
    assert sent >= POSTGRES_CASES * 0.5, f"only {sent} cases over {operations} operations"
    assert sent.with_nul > 0, "no generated case carried a NUL byte"
