"""The review routes (admin) and the chat page's static files, against the real API and answer log.

No model server is needed: the questions asked here are refused by the retrieval gate, before any
generation, and the hot swap is tried against a port where nothing listens.
"""

from __future__ import annotations

import re

import pytest
from fixtures.api import COLLECTION, make_harness
from fixtures.core import REPO_ROOT

pytestmark = pytest.mark.slow

OFF_TOPIC = "What is the boiling point of mercury in kelvin?"
NO_FLAG = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # a well-formed ULID no flag has


@pytest.fixture
def h(tmp_path, handbook_chroma, base_model_dir, shared_models):
    harness = make_harness(tmp_path, handbook_chroma, "http://127.0.0.1:9", base_model_dir, shared_models)
    with harness.client:
        yield harness


def _admin(h):
    return h.headers(h.admin_key)


def _refusal(h) -> str:
    resp = h.client.post("/v1/chat", json={"question": OFF_TOPIC, "collection": COLLECTION}, headers=h.headers())
    assert resp.status_code == 200, resp.text
    assert resp.json()["refusal_layer"] == "retrieval_gate"
    return resp.json()["answer_id"]


def _flag(h, answer_id: str, verdict: str = "wrong_refusal", **extra) -> dict:
    resp = h.client.post(f"/v1/answers/{answer_id}/feedback", json={"verdict": verdict, **extra}, headers=h.headers())
    assert resp.status_code == 201, resp.text
    return resp.json()


def _write_adapter(folder, content: bytes):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


# --- the page ------------------------------------------------------------------------------------


def test_the_page_is_served_with_a_strict_content_security_policy(h):
    page = h.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="/ui/app.js"' in page.text and 'href="/ui/app.css"' in page.text
    assert "set-cookie" not in page.headers
    js = h.client.get("/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == csp
    assert h.client.get("/ui/app.css").headers["content-type"].startswith("text/css")
    for missing in ("/ui/index.html", "/ui/nothing.js", "/ui/..%2Fapi.py", "/ui/%2E%2E/routes_web.py"):
        assert h.client.get(missing).status_code == 404, missing


def test_the_page_puts_document_text_in_as_text_only():
    web = REPO_ROOT / "service" / "web"
    js = (web / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, f"app.js uses {sink}: build the DOM with text nodes"
    html = (web / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script (the CSP forbids it)"
    assert " style=" not in html and "<style" not in html, "no inline styles (the CSP forbids them)"
    assert not re.search(r"<[^>]*\son[a-z]+=", html), "no inline event handlers"
    assert "sessionStorage" in js and "localStorage" not in js and "document.cookie" not in js
    assert 'credentials: "omit"' in js


def test_cors_stays_closed(h):
    pre = h.client.options(
        "/v1/chat",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )  # fmt: skip
    assert "access-control-allow-origin" not in pre.headers
    got = h.client.get("/v1/collections", headers={**h.headers(), "Origin": "https://evil.example"})
    assert got.status_code == 200 and "access-control-allow-origin" not in got.headers


# --- who may review ------------------------------------------------------------------------------

ROUTES = [
    ("get", "/v1/feedback/pending", None),
    ("post", "/v1/feedback/review", {"flag_ids": [NO_FLAG], "decision": "approved"}),
    ("get", "/v1/retrain/runs", None),
    ("get", "/v1/adapters", None),
    ("post", "/v1/adapters/abcd1234/promote", {"swap": False}),
    ("post", "/v1/adapters/rollback", {"swap": False}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_review_routes_need_an_admin_key(h, method, path, body):
    kwargs = {} if body is None else {"json": body}
    assert getattr(h.client, method)(path, **kwargs).status_code == 401
    bad = getattr(h.client, method)(path, headers=h.headers("cnd_not-a-key"), **kwargs)
    assert bad.status_code == 401
    user = getattr(h.client, method)(path, headers=h.headers(), **kwargs)
    assert user.status_code == 403 and user.json()["error"] == "this needs an admin key"


def test_pending_flags_are_reviewed_with_an_audit_trail(h):
    first, second = _refusal(h), _refusal(h)
    f1 = _flag(h, first, comment="the handbook does not say")
    f2 = _flag(h, second, "correct")
    assert f1["review_status"] == f2["review_status"] == "pending"  # a user key is untrusted

    pending = h.client.get("/v1/feedback/pending", headers=_admin(h))
    assert pending.status_code == 200, pending.text
    items = pending.json()["items"]
    assert [i["id"] for i in items] == [f1["feedback_id"], f2["feedback_id"]]  # oldest first
    item = items[0]
    assert item["verdict"] == "wrong_refusal" and item["comment"] == "the handbook does not say"
    assert item["answer"]["question"] == OFF_TOPIC and item["answer"]["refusal_layer"] == "retrieval_gate"
    assert item["answer"]["passages"] and all(p["text"] and not p["in_prompt"] for p in item["answer"]["passages"])

    body = {"flag_ids": [f1["feedback_id"]], "decision": "approved", "note": "checked the handbook", "reviewer": "Ana"}
    done = h.client.post("/v1/feedback/review", json=body, headers=_admin(h))
    assert done.status_code == 200, done.text
    stored = h.services.store.get_flag(f1["feedback_id"])
    assert str(stored.review_status) == "approved" and stored.review_note == "checked the handbook"
    admin_id = h.services.store.authenticate(h.admin_key).id
    assert stored.reviewed_by == f"Ana (key {admin_id})" and stored.reviewed_at is not None

    rejected = h.client.post(
        "/v1/feedback/review", json={"flag_ids": [f2["feedback_id"]], "decision": "rejected"}, headers=_admin(h)
    )
    assert rejected.json()["items"][0]["review_status"] == "rejected"
    assert h.client.get("/v1/feedback/pending", headers=_admin(h)).json()["items"] == []
    exported = h.client.get("/v1/feedback/export", headers=_admin(h)).text
    assert f1["feedback_id"] in exported and f2["feedback_id"] not in exported


def test_review_input_errors(h):
    flag = _flag(h, _refusal(h))
    post = lambda body: h.client.post("/v1/feedback/review", json=body, headers=_admin(h))  # noqa: E731
    missing = post({"flag_ids": [flag["feedback_id"], NO_FLAG], "decision": "approved"})
    assert missing.status_code == 404 and NO_FLAG in missing.json()["error"]
    assert str(h.services.store.get_flag(flag["feedback_id"]).review_status) == "pending"  # all or nothing
    for bad in (
        {"flag_ids": [flag["feedback_id"]], "decision": "pending"},
        {"flag_ids": [flag["feedback_id"]], "decision": "approve"},
        {"flag_ids": [], "decision": "approved"},
        {"flag_ids": ["not-an-id"], "decision": "approved"},
        {"flag_ids": [flag["feedback_id"]], "decision": "approved", "note": "x" * 1001},
        {"flag_ids": [flag["feedback_id"]], "decision": "approved", "note": "nul\x00"},
        {"flag_ids": [flag["feedback_id"]], "decision": "approved", "extra": 1},
    ):
        assert post(bad).status_code == 422, bad
    assert h.client.get("/v1/feedback/pending?cursor=nope", headers=_admin(h)).status_code == 422
    assert h.client.get("/v1/feedback/pending?limit=0", headers=_admin(h)).status_code == 422


def test_an_admin_limited_to_other_collections_sees_none_of_these_flags(h):
    flag = _flag(h, _refusal(h))
    _, other = h.services.store.create_key("other-admin", role="admin", collections=["elsewhere"], trusted=True)
    assert h.client.get("/v1/feedback/pending", headers=h.headers(other)).json()["items"] == []
    body = {"flag_ids": [flag["feedback_id"]], "decision": "approved"}
    assert h.client.post("/v1/feedback/review", json=body, headers=h.headers(other)).status_code == 404
    for method, path, payload in ROUTES[2:]:  # adapters and runs serve every collection
        kwargs = {} if payload is None else {"json": payload}
        assert getattr(h.client, method)(path, headers=h.headers(other), **kwargs).status_code == 403


# --- adapters and runs ---------------------------------------------------------------------------


def test_adapters_list_promote_and_roll_back_with_the_registry_history(h, tmp_path):
    from candor.retrain.adapters import AdapterRegistry

    reg = AdapterRegistry.for_settings(h.settings)
    assert h.client.get("/v1/adapters", headers=_admin(h)).json()["versions"] == []
    v1 = reg.register(_write_adapter(tmp_path / "a1", b"one"), source="import")
    v2 = reg.register(_write_adapter(tmp_path / "a2", b"two"), source="loop", parent=v1.version, flag_ids=["f1"])
    reg.promote(v1.version)

    listed = h.client.get("/v1/adapters", headers=_admin(h)).json()
    assert listed["current"] == v1.version and listed["previous"] is None and listed["answerability"] is None
    assert {v["version"] for v in listed["versions"]} == {v1.version, v2.version}
    assert all("path" not in v for v in listed["versions"])  # no server folders

    promoted = h.client.post(f"/v1/adapters/{v2.version[:8]}/promote", json={"swap": False, "note": "by hand"},
                             headers=_admin(h))  # fmt: skip
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {"current": v2.version, "swapped": False}
    admin_id = h.services.store.authenticate(h.admin_key).id
    event = reg.history()[-1]
    assert event["action"] == "promote" and event["note"] == f"API, key {admin_id}: by hand"

    rolled = h.client.post("/v1/adapters/rollback", json={"swap": False}, headers=_admin(h))
    assert rolled.json() == {"current": v1.version, "replaced": v2.version, "swapped": False}
    assert reg.current().version == v1.version and reg.history()[-1]["action"] == "rollback"
    again = h.client.post("/v1/adapters/rollback", json={"swap": False}, headers=_admin(h))
    assert again.status_code == 409 and "nothing to roll back" in again.json()["error"]

    # the swap is tried and fails (no model server): promoted, not serving, and said so
    swapped = h.client.post(f"/v1/adapters/{v2.version}/promote", headers=_admin(h))
    assert swapped.status_code == 200 and swapped.json()["swapped"] is False
    assert "not serving" in swapped.json()["swap_error"] and "127.0.0.1" not in swapped.json()["swap_error"]
    assert reg.current().version == v2.version and reg.serving() is None

    unknown = h.client.post("/v1/adapters/ffffffff/promote", json={"swap": False}, headers=_admin(h))
    assert unknown.status_code == 404 and str(reg.root) not in unknown.text
    for bad in ("XYZ", "abc", "a" * 65):
        assert h.client.post(f"/v1/adapters/{bad}/promote", json={"swap": False}, headers=_admin(h)).status_code == 422
    bad_body = h.client.post("/v1/adapters/rollback", json={"swap": "maybe"}, headers=_admin(h))
    assert bad_body.status_code == 422


def test_retraining_runs_newest_first_with_the_gates_reasons(h):
    from candor.retrain.runs import record_run

    record_run(h.settings, {"status": "no_flags", "exported_flags": 0}, "2026-01-01T00:00:00Z")
    decision = {"verdict": "reject", "reasons": ["over-refusal rose by 0.12 (max 0.10)"], "promoted": False,
                "candidate_version": "0123456789abcdef"}  # fmt: skip
    record_run(h.settings, {"status": "rejected", "exported_flags": 3, "decision": decision}, "2026-01-02T00:00:00Z")
    record_run(h.settings, {"exported_flags": 3}, "2026-01-03T00:00:00Z", RuntimeError("dvc repro failed"))
    runs = h.client.get("/v1/retrain/runs", headers=_admin(h)).json()["runs"]
    assert [r["status"] for r in runs] == ["failed", "rejected", "no_flags"]
    assert runs[0]["error"] == "RuntimeError: dvc repro failed"
    assert runs[1]["decision"]["reasons"] == ["over-refusal rose by 0.12 (max 0.10)"]
    assert [r["status"] for r in h.client.get("/v1/retrain/runs?limit=1", headers=_admin(h)).json()["runs"]] == [
        "failed"
    ]
    assert h.client.get("/v1/retrain/runs?limit=0", headers=_admin(h)).status_code == 422
