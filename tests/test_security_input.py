"""Hostile input at the API's door: oversized bodies, deep JSON, huge questions, invalid UTF-8,
path traversal in document ids. Each is a 4xx with a message, and nothing is stored.

The model server is a TGI stub here (tests/stub_model_server.py): these tests are about
parsing and validation; the real Chroma, SQLite, embedder and tokenizer are behind the API.
"""

from __future__ import annotations

import json

import pytest
from fixtures.api import COLLECTION, make_harness
from reliability_helpers import count_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def guarded(tmp_path, handbook_chroma, stub, base_model_dir, shared_models):
    h = make_harness(tmp_path, handbook_chroma, stub.url, base_model_dir, shared_models, max_request_bytes=64_000)
    with h.client:
        yield h


def assert_nothing_stored(h, collections_before: list[str] | None = None) -> None:
    rows = count_rows(h.settings.resolved_database_url)
    assert rows["answers"] == 0 and rows["answer_chunks"] == 0 and rows["flags"] == 0, rows
    if collections_before is not None:
        now = h.client.get("/v1/collections", headers=h.headers(h.admin_key)).json()["collections"]
        assert now == collections_before


def assert_client_error(resp, *codes: int) -> dict:
    assert resp.status_code in codes, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


def post_raw(h, path: str, data: bytes, key: str | None = None, **headers: str):
    hdrs = {**h.headers(key), "Content-Type": "application/json", **headers}
    return h.client.post(path, content=data, headers=hdrs)


def test_oversized_bodies_are_413_declared_or_streamed(guarded):
    big = json.dumps({"question": "x" * 100_000, "collection": COLLECTION}).encode()
    body = assert_client_error(post_raw(guarded, "/v1/chat", big), 413)
    assert "too large" in body["error"]

    def chunks():  # no Content-Length: the limit must hold on the bytes actually received
        for _ in range(20):
            yield b" " * 8192
        yield big

    resp = guarded.client.post(
        "/v1/chat", content=chunks(), headers={**guarded.headers(), "Content-Type": "application/json"}
    )
    assert_client_error(resp, 413)
    assert_nothing_stored(guarded)


@pytest.mark.parametrize("depth", [5_000, 30_000])
def test_deeply_nested_json_is_rejected(guarded, depth):
    nested = "[" * depth + "]" * depth
    for doc in (
        f'{{"question": "hi", "collection": "{COLLECTION}", "history": {nested}}}',
        nested,
        '{"a":' * depth + "1" + "}" * depth,
    ):
        resp = post_raw(guarded, "/v1/chat", doc.encode())
        assert_client_error(resp, 400, 413, 422)
    docs = '{"documents": [{"id": "d", "text": "t", "metadata": ' + '{"a":' * depth + "1" + "}" * depth + "}]}"
    resp = post_raw(guarded, f"/v1/collections/{COLLECTION}/documents", docs.encode(), key=guarded.admin_key)
    assert_client_error(resp, 400, 413, 422)
    assert_nothing_stored(guarded)


def test_huge_question_is_422_before_retrieval(guarded, stub):
    calls = stub.calls
    limit = guarded.settings.max_question_chars
    resp = guarded.client.post(
        "/v1/chat", json={"question": "why " * limit, "collection": COLLECTION}, headers=guarded.headers()
    )
    body = assert_client_error(resp, 422)
    assert str(limit) in body["error"]
    resp = guarded.client.post(
        "/v1/chat/completions",
        json={"model": COLLECTION, "messages": [{"role": "user", "content": "why " * limit}]},
        headers=guarded.headers(),
    )
    assert_client_error(resp, 413, 422)
    assert stub.calls == calls, "nothing reached the model server"
    assert_nothing_stored(guarded)


def test_invalid_utf8_and_lone_surrogates_are_rejected(guarded):
    bad_bytes = b'{"question": "caf\xe9 \xff\xfe", "collection": "' + COLLECTION.encode() + b'"}'
    assert_client_error(post_raw(guarded, "/v1/chat", bad_bytes), 400, 422)
    surrogate = b'{"question": "hello \\ud800 there", "collection": "' + COLLECTION.encode() + b'"}'
    assert_client_error(post_raw(guarded, "/v1/chat", surrogate), 422)
    doc = b'{"documents": [{"id": "a\\udfff", "text": "some text"}]}'
    assert_client_error(post_raw(guarded, "/v1/collections/newcol/documents", doc, key=guarded.admin_key), 422)
    doc = b'{"documents": [{"id": "ok", "text": "\xc3\x28 broken"}]}'
    assert_client_error(post_raw(guarded, "/v1/collections/newcol/documents", doc, key=guarded.admin_key), 400, 422)
    not_json = b"\x00\x01\x02 not json"
    assert_client_error(post_raw(guarded, "/v1/chat", not_json), 400, 422)
    assert_nothing_stored(guarded, [COLLECTION])


@pytest.mark.parametrize(
    "doc_id",
    ["../../etc/passwd", "/etc/passwd", "a/../../b.md", "..\\..\\windows\\win.ini", "C:\\boot.ini", "..", "./x/.."],
)
def test_path_traversal_in_document_ids_is_422_and_nothing_is_written(guarded, doc_id):
    before = guarded.client.get("/v1/collections", headers=guarded.headers(guarded.admin_key)).json()["collections"]
    resp = guarded.client.post(
        "/v1/collections/uploads/documents",
        json={"documents": [{"id": doc_id, "text": "Harmless text about the handbook."}]},
        headers=guarded.headers(guarded.admin_key),
    )
    body = assert_client_error(resp, 422)
    assert "id" in body["error"]
    assert_nothing_stored(guarded, before)


def test_path_traversal_in_collection_names_is_rejected(guarded):
    for name in ("..%2F..%2Fetc", "..", "a%2F..%2Fb", "%2e%2e"):
        resp = guarded.client.post(
            f"/v1/collections/{name}/documents",
            json={"documents": [{"id": "x", "text": "text"}]},
            headers=guarded.headers(guarded.admin_key),
        )
        assert 400 <= resp.status_code < 500, (name, resp.status_code)
    resp = guarded.client.post(
        "/v1/chat", json={"question": "hi", "collection": "../handbook"}, headers=guarded.headers()
    )
    assert_client_error(resp, 422)
    assert_nothing_stored(guarded, [COLLECTION])
