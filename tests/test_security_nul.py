"""A NUL byte (U+0000) in client text is one clear 422 naming the field, on SQLite and on PostgreSQL.

PostgreSQL's text columns cannot hold NUL and SQLite's can: before, Postgres answered a NUL in a
question with a 503 "database outage" (after computing the answer, then dropping it unlogged) while
SQLite stored it. Now every client text field that can reach the answer log or the index is refused
at the door, the same on both backends, and a database error caused by a value is a 4xx, never an
outage. Real API (TestClient), real Chroma, SQLite and PostgreSQL; the model server is the TGI stub.
"""

from __future__ import annotations

import pytest
from fixtures.api import COLLECTION, make_harness
from fixtures.api import HANDBOOK_QUESTION as QUESTION
from fixtures.store import answer_record
from reliability_helpers import count_rows

from candor.errors import InvalidInputError

pytestmark = pytest.mark.slow

NUL_QUESTION = "Who won the 1966 football\u0000 world cup?"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def nul_api(request, tmp_path, handbook_chroma, stub, base_model_dir, shared_models):
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    h = make_harness(tmp_path, handbook_chroma, stub.url, base_model_dir, shared_models, database_url=url)
    with h.client:
        yield h


def _rows(h) -> dict[str, int]:
    return count_rows(h.settings.resolved_database_url)


def assert_422_naming(resp, field: str) -> None:
    assert resp.status_code == 422, (resp.status_code, resp.text[:400])
    assert "retry-after" not in resp.headers
    error = resp.json()["error"]
    assert field in error and "NUL" in error, error


def test_nul_in_chat_text_is_422_naming_the_field_and_nothing_is_stored(nul_api):
    h = nul_api
    hdr = h.headers()
    resp = h.client.post("/v1/chat", json={"question": NUL_QUESTION, "collection": COLLECTION}, headers=hdr)
    assert_422_naming(resp, "question")
    stream = {"question": NUL_QUESTION, "collection": COLLECTION, "stream": True}
    assert_422_naming(h.client.post("/v1/chat", json=stream, headers=hdr), "question")
    history = [{"role": "user", "content": "Tell me\u0000 about Candor."}, {"role": "assistant", "content": "Sure."}]
    resp = h.client.post(
        "/v1/chat", json={"question": QUESTION, "collection": COLLECTION, "history": history}, headers=hdr
    )
    assert_422_naming(resp, "history.0.content")
    openai = {"model": COLLECTION, "messages": [{"role": "user", "content": NUL_QUESTION}]}
    assert_422_naming(h.client.post("/v1/chat/completions", json=openai, headers=hdr), "content")
    parts = {"model": COLLECTION, "messages": [{"role": "user", "content": [{"type": "text", "text": NUL_QUESTION}]}]}
    assert_422_naming(h.client.post("/v1/chat/completions", json=parts, headers=hdr), "content")
    assert _rows(h) == {"answers": 0, "answer_chunks": 0, "flags": 0, "failed": 0}


def test_nul_in_a_flag_is_422_and_the_answer_keeps_no_flag(nul_api):
    h = nul_api
    ok = h.client.post("/v1/chat", json={"question": QUESTION, "collection": COLLECTION}, headers=h.headers())
    assert ok.status_code == 200, ok.text
    answer_id = ok.json()["answer_id"]
    for field in ("comment", "correction"):
        body = {"verdict": "hallucination", field: "wrong\u0000 model"}
        resp = h.client.post(f"/v1/answers/{answer_id}/feedback", json=body, headers=h.headers())
        assert_422_naming(resp, field)
    assert _rows(h)["flags"] == 0
    fine = h.client.post(
        f"/v1/answers/{answer_id}/feedback", json={"verdict": "correct", "comment": "fine"}, headers=h.headers()
    )
    assert fine.status_code == 201, fine.text


def test_nul_in_posted_documents_is_422_and_nothing_is_indexed(nul_api):
    h = nul_api
    admin = h.headers(h.admin_key)
    cases = {
        "documents.0.text": {"id": "a.txt", "text": "Oxygen\u0000 is an element."},
        "documents.0.title": {"id": "a.txt", "text": "Oxygen is an element.", "title": "Ox\u0000"},
        "documents.0.metadata": {"id": "a.txt", "text": "Oxygen is an element.", "metadata": {"k": "v\u0000"}},
    }
    for field, doc in cases.items():
        resp = h.client.post("/v1/collections/nulls/documents", json={"documents": [doc]}, headers=admin)
        assert resp.status_code == 422 and field in resp.json()["error"], (field, resp.text[:300])
    assert "nulls" not in h.client.get("/v1/collections", headers=admin).json()["collections"]


def test_nul_in_query_and_path_parameters_is_a_client_error_not_an_outage(nul_api):
    h = nul_api
    admin = h.headers(h.admin_key)
    listed = h.client.get("/v1/answers", params={"collection": "hand\u0000book"}, headers=admin)
    assert listed.status_code == 422 and "collection" in listed.json()["error"], listed.text[:300]
    one = h.client.get("/v1/answers/01ABC%00DEF", headers=admin)
    assert one.status_code == 404, one.text[:300]
    verdict = h.client.get("/v1/answers", params={"verdict": "hallu\u0000"}, headers=admin)
    assert verdict.status_code == 422, verdict.text[:300]


# --- the store itself: the same rule for the CLI and every other caller, on both backends ---------


def test_the_store_refuses_client_text_with_nul_on_both_backends(store):
    answer_id = store.log_answer(answer_record())
    with pytest.raises(InvalidInputError, match="comment: text must not contain NUL"):
        store.add_feedback(answer_id, "hallucination", comment="bad\u0000")
    with pytest.raises(InvalidInputError, match="correction: text must not contain NUL"):
        store.add_feedback(answer_id, "hallucination", correction="bad\u0000")
    with pytest.raises(InvalidInputError, match="key name: text must not contain NUL"):
        store.create_key("ali\u0000ce", role="user")
    with pytest.raises(InvalidInputError, match="question"):
        store.log_answer(answer_record(question="Who\u0000?"))
    with pytest.raises(InvalidInputError, match="history"):
        store.log_answer(answer_record(history=[{"role": "user", "content": "x\u0000"}]))
    with pytest.raises(InvalidInputError, match="collection"):
        store.list_answers(collection="do\u0000cs")
    assert store.get_answer(answer_id).flags == []


def test_nul_in_text_candor_produced_is_removed_the_same_on_both_backends(store):
    record = answer_record(answer="Rollo\u0000.", raw_answer="Rollo\u0000.")
    record["chunks"][0] = {**record["chunks"][0], "text": "The Nor\u0000mans.", "prompt_text": "The Nor\u0000mans."}
    answer = store.get_answer(store.log_answer(record))
    assert answer.answer == "Rollo." and answer.raw_answer == "Rollo."
    assert answer.chunks[0].text == "The Normans." and answer.chunks[0].prompt_text == "The Normans."


@pytest.mark.postgres
def test_a_value_postgres_cannot_store_is_invalid_input_not_unavailable(postgres_url, settings):
    """Defence in depth: a DataError from the database (here psycopg's NUL refusal) is the caller's input
    error, whatever path the value took past the schemas."""
    from sqlalchemy import text

    from candor.errors import UnavailableError
    from candor.feedback.db import read_session
    from candor.feedback.store import AnswerStore

    store = AnswerStore(settings.model_copy(update={"database_url": postgres_url}))
    try:
        with pytest.raises(InvalidInputError, match="cannot store this value") as info, read_session(store.engine) as s:
            s.execute(text("SELECT CAST(:v AS text)"), {"v": "a\u0000b"})
        assert not isinstance(info.value, UnavailableError)
    finally:
        store.close()
