"""Keys, roles, collection limits, rate limits, flags and input limits of the API."""

from __future__ import annotations

import pytest
from fixtures.api import COLLECTION, make_harness

pytestmark = pytest.mark.slow

OFF_TOPIC = "What is the boiling point of mercury in kelvin?"  # refused by the gate: no generation, fast


def ask(api, key=None, question=OFF_TOPIC, collection=COLLECTION):
    return api.client.post("/v1/chat", json={"question": question, "collection": collection}, headers=api.headers(key))


def test_keys_are_required_and_checked(api):
    assert api.client.post("/v1/chat", json={"question": "x", "collection": COLLECTION}).status_code == 401
    bad = api.client.post("/v1/chat", json={"question": "x", "collection": COLLECTION}, headers=api.headers("nope"))
    assert bad.status_code == 401 and "invalid" in bad.json()["error"]
    assert ask(api).status_code == 200


def test_flag_and_list_flagged_answers(api):
    answer_id = ask(api).json()["answer_id"]
    resp = api.client.post(
        f"/v1/answers/{answer_id}/feedback",
        json={"verdict": "wrong_refusal", "correction": "about 630 K", "comment": "test"},
        headers=api.headers(),
    )
    assert resp.status_code == 201, resp.text
    flag = resp.json()
    assert flag["verdict"] == "wrong_refusal" and flag["review_status"] == "pending"  # untrusted user key

    other = ask(api)  # not flagged
    page = api.client.get("/v1/answers", params={"flagged": "true"}, headers=api.headers()).json()
    assert [a["id"] for a in page["items"]] == [answer_id]
    assert page["items"][0]["flags"][0]["correction"] == "about 630 K"
    everything = api.client.get("/v1/answers", headers=api.headers()).json()
    assert {a["id"] for a in everything["items"]} == {answer_id, other.json()["answer_id"]}

    bad = api.client.post(f"/v1/answers/{answer_id}/feedback", json={"verdict": "meh"}, headers=api.headers())
    assert bad.status_code == 422 and "verdict" in bad.json()["error"]
    missing = api.client.post("/v1/answers/nope/feedback", json={"verdict": "correct"}, headers=api.headers())
    assert missing.status_code == 404


def test_users_see_only_their_own_answers_admins_see_all(api):
    answer_id = ask(api).json()["answer_id"]
    _, other_user = api.services.store.create_key("other", role="user")
    assert api.client.get(f"/v1/answers/{answer_id}", headers=api.headers(other_user)).status_code == 404
    flag = api.client.post(
        f"/v1/answers/{answer_id}/feedback", json={"verdict": "correct"}, headers=api.headers(other_user)
    )
    assert flag.status_code == 404
    assert api.client.get("/v1/answers", headers=api.headers(other_user)).json()["items"] == []
    assert api.client.get(f"/v1/answers/{answer_id}", headers=api.headers(api.admin_key)).status_code == 200


def test_admin_only_routes(api):
    docs = {"documents": [{"id": "note-1", "text": "Candor's mascot is a heron named Iris."}]}
    assert (
        api.client.post(f"/v1/collections/{COLLECTION}-x/documents", json=docs, headers=api.headers()).status_code
        == 403
    )
    assert api.client.get("/v1/feedback/export", headers=api.headers()).status_code == 403
    assert api.client.get("/v1/feedback/export", headers=api.headers(api.admin_key)).status_code == 200


def test_admin_ingests_and_deletes_documents_over_http(api):
    name = "notes"
    docs = {"documents": [{"id": "note-1", "title": "Mascot", "text": "Candor's mascot is a heron named Iris."}]}
    resp = api.client.post(f"/v1/collections/{name}/documents", json=docs, headers=api.headers(api.admin_key))
    assert resp.status_code == 201, resp.text
    hits = api.services.retriever.retrieve("What is Candor's mascot?", name, 1)
    assert hits and hits[0].doc_id == "note-1"
    gone = api.client.delete(f"/v1/collections/{name}/documents/note-1", headers=api.headers(api.admin_key))
    assert gone.status_code == 200 and gone.json()["deleted"] == ["note-1"]
    assert api.services.retriever.retrieve("What is Candor's mascot?", name, 1) == []
    again = api.client.delete(f"/v1/collections/{name}/documents/note-1", headers=api.headers(api.admin_key))
    assert again.status_code == 404


def test_keys_limited_to_collections(api):
    _, limited = api.services.store.create_key("limited", role="user", collections=["elsewhere"])
    resp = ask(api, key=limited)
    assert resp.status_code == 404 and COLLECTION in resp.json()["error"]
    listed = api.client.get("/v1/collections", headers=api.headers(limited)).json()
    assert COLLECTION not in listed["collections"]


def test_unknown_collection_is_404(api):
    resp = ask(api, collection="no-such-collection")
    assert resp.status_code == 404 and "no-such-collection" in resp.json()["error"]


def test_rate_limit_per_key(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models):
    h = make_harness(
        tmp_path, handbook_chroma, model_server.url, base_model_dir, shared_models, rate_limit_per_minute=2
    )
    with h.client:
        assert [ask(h).status_code for _ in range(2)] == [200, 200]
        limited = ask(h)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert ask(h, key=h.admin_key).status_code == 200  # another key has its own bucket


def test_input_limits(api):
    huge = ask(api, question="why " * 1000)
    assert huge.status_code == 422 and "characters" in huge.json()["error"]
    blank = ask(api, question="   ")
    assert blank.status_code == 422
    body = b'{"question": "' + b"x" * 2_000_000 + b'", "collection": "handbook"}'
    too_big = api.client.post("/v1/chat", content=body, headers={**api.headers(), "content-type": "application/json"})
    assert too_big.status_code == 413 and "too large" in too_big.json()["error"]
    not_utf8 = api.client.post(
        "/v1/chat",
        content=b'{"question": "\xff\xfe", "collection": "handbook"}',
        headers={**api.headers(), "content-type": "application/json"},
    )
    assert 400 <= not_utf8.status_code < 500
    assert api.services.store.list_answers().items == []  # nothing stored
