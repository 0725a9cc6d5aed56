"""Tenant isolation: a key limited to collection A never retrieves from, reads answers of,
lists, exports or flags anything of collection B, by any route (Candor's chat, the OpenAI
route, the answers routes, collections). Real Chroma with two collections, real SQLite;
the model server is the TGI stub (access control is what is tested).
"""

from __future__ import annotations

import pytest
from reliability_helpers import harness_on, ingest_folder
from stub_model_server import running_stub

pytestmark = pytest.mark.slow

SECRET_B = "The bravo launch code is 7741-TANGO."
DOCS_A = {"a.md": "# Alpha\n\nThe alpha team meets on Mondays in room 4 to plan the alpha release.\n"}
DOCS_B = {"b.md": f"# Bravo\n\nThe bravo team meets on Fridays in room 9. {SECRET_B}\n"}
QUESTION_B = "What is the bravo launch code?"


@pytest.fixture(scope="module")
def two_collections(tmp_path_factory):
    chroma = tmp_path_factory.mktemp("tenants") / "chroma"
    ingest_folder(chroma.parent / "alpha", DOCS_A, "alpha", chroma)
    ingest_folder(chroma.parent / "bravo", DOCS_B, "bravo", chroma)
    return chroma


@pytest.fixture
def tenants(tmp_path, two_collections, base_model_dir, shared_models):
    with running_stub() as stub:
        h = harness_on(tmp_path, two_collections, stub.url, base_model_dir, shared_models)
        with h.client:
            yield h


def test_a_key_limited_to_alpha_never_reaches_bravo(tenants):
    h = tenants
    store = h.services.store
    alpha_user_id, alpha_user = store.create_key("alpha-user", role="user", collections=["alpha"])
    alpha_admin_id, alpha_admin = store.create_key("alpha-admin", role="admin", collections=["alpha"], trusted=True)
    _, bravo_user = store.create_key("bravo-user", role="user", collections=["bravo"])

    # An answer in bravo, by bravo's user, and one in alpha by the alpha user.
    b = h.client.post("/v1/chat", json={"question": QUESTION_B, "collection": "bravo"}, headers=h.headers(bravo_user))
    assert b.status_code == 200, b.text
    b_id = b.json()["answer_id"]
    assert any("TANGO" in c.text for c in store.get_answer(b_id).chunks), "bravo's own key does retrieve it"
    a = h.client.post(
        "/v1/chat", json={"question": "When does alpha meet?", "collection": "alpha"}, headers=h.headers(alpha_user)
    )
    assert a.status_code == 200, a.text
    before = store.list_answers(limit=100).items

    for key in (alpha_user, alpha_admin):
        hdr = h.headers(key)
        # retrieval: Candor's chat and the OpenAI route
        r = h.client.post("/v1/chat", json={"question": QUESTION_B, "collection": "bravo"}, headers=hdr)
        assert r.status_code == 404 and "bravo" in r.json()["error"]
        r = h.client.post("/v1/chat", json={"question": QUESTION_B, "collection": "bravo", "stream": True}, headers=hdr)
        assert r.status_code == 404
        r = h.client.post(
            "/v1/chat/completions",
            json={"model": "bravo", "messages": [{"role": "user", "content": QUESTION_B}]},
            headers=hdr,
        )
        assert r.status_code == 404
        # asking alpha about bravo's secret never surfaces bravo's text
        r = h.client.post("/v1/chat", json={"question": QUESTION_B, "collection": "alpha"}, headers=hdr)
        assert r.status_code == 200 and "TANGO" not in r.text
        chunks = store.get_answer(r.json()["answer_id"]).chunks
        assert chunks and all(c.doc_id == "a.md" and "TANGO" not in c.text for c in chunks)
        # reading, listing, flagging bravo's answer
        assert h.client.get(f"/v1/answers/{b_id}", headers=hdr).status_code == 404
        r = h.client.post(f"/v1/answers/{b_id}/feedback", json={"verdict": "hallucination"}, headers=hdr)
        assert r.status_code == 404
        assert h.client.get("/v1/answers", params={"collection": "bravo"}, headers=hdr).status_code == 404
        listed = h.client.get("/v1/answers", params={"limit": 500}, headers=hdr).json()["items"]
        assert listed and all(item["collection"] == "alpha" for item in listed), listed
        cols = h.client.get("/v1/collections", headers=hdr).json()["collections"]
        assert cols == ["alpha"]
        models = h.client.get("/v1/models", headers=hdr)
        if models.status_code == 200:
            assert "bravo" not in models.text
        # writing into bravo
        r = h.client.post(
            "/v1/collections/bravo/documents", json={"documents": [{"id": "x", "text": "planted"}]}, headers=hdr
        )
        assert r.status_code in (403, 404)
        assert h.client.delete("/v1/collections/bravo/documents/b.md", headers=hdr).status_code in (403, 404)

    # the alpha admin's export holds no bravo rows, even once bravo's answer is flagged
    flagged = h.client.post(f"/v1/answers/{b_id}/feedback", json={"verdict": "correct"}, headers=h.headers(bravo_user))
    assert flagged.status_code == 201
    store.review_flags([flagged.json()["feedback_id"]], "approved")
    export = h.client.get("/v1/feedback/export", headers=h.headers(alpha_admin))
    assert export.status_code == 200 and "bravo" not in export.text and "TANGO" not in export.text
    full = h.client.get("/v1/feedback/export", headers=h.headers(h.admin_key))
    assert "bravo" in full.text  # the unrestricted admin does see it: the filter is the key's limit

    # nothing of bravo changed, and no flag from an alpha key exists
    assert store.get_answer(b_id).flags and all(
        f.api_key_id not in (alpha_user_id, alpha_admin_id) for f in store.get_answer(b_id).flags
    )
    after_b = [x for x in store.list_answers(collection="bravo", limit=100).items]
    assert [x.id for x in after_b] == [x.id for x in before if x.collection == "bravo"]
    chunks = h.services.retriever.retrieve("bravo launch code", "bravo", 4)
    assert any("TANGO" in c.text for c in chunks) and not any(c.doc_id == "x" for c in chunks)
