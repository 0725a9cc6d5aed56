"""The chat API end to end: real Chroma, real SQLite, the real model behind a real model server."""

from __future__ import annotations

import json

import pytest
from fixtures.api import COLLECTION, make_harness

pytestmark = pytest.mark.slow

ANSWERABLE = "Which embedding model does Candor use?"
OFF_TOPIC = "What is the boiling point of mercury in kelvin?"


def chat(api, question, key=None, **body):
    return api.client.post(
        "/v1/chat", json={"question": question, "collection": COLLECTION, **body}, headers=api.headers(key)
    )


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
        events.append((name, data))
    return events


@pytest.fixture
def lenient_api(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models):
    """Grounding recorded but not enforced: only the gate and the model itself can refuse."""
    h = make_harness(
        tmp_path, handbook_chroma, model_server.url, base_model_dir, shared_models, grounding_enforce=False
    )
    with h.client:
        yield h


def test_answer_with_citations_is_logged(lenient_api):
    resp = chat(lenient_api, ANSWERABLE)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["refused"] is False and body["answer"].strip()
    assert body["citations"], "an answer carries its citations"
    assert "MiniLM" in body["citations"][0]["snippet"]  # the top chunk holds the answer
    assert all(set(c) == {"doc_id", "chunk_id", "source", "snippet", "score"} for c in body["citations"])
    assert body["timings_ms"]["total"] >= body["timings_ms"]["generation"] > 0
    assert body["model"]["base"]

    logged = lenient_api.client.get(f"/v1/answers/{body['answer_id']}", headers=lenient_api.headers()).json()
    assert logged["answer"] == body["answer"] and logged["status"] == "ok"
    assert logged["prompt_version"] and logged["rendered_prompt"]
    in_prompt = [c for c in logged["chunks"] if c["prompt_text"] is not None]
    assert [c["chunk_id"] for c in in_prompt] == [c["chunk_id"] for c in body["citations"]]
    assert all(c["text"] and len(c["text_sha256"]) == 64 for c in logged["chunks"])


def test_retrieval_gate_refuses_without_the_model(api):
    resp = chat(api, OFF_TOPIC)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["refused"] is True and body["refusal_layer"] == "retrieval_gate"
    assert body["answer"] == "I don't know based on the provided documents."
    assert body["timings_ms"]["generation"] == 0 and body["citations"] == []
    logged = api.services.store.get_answer(body["answer_id"])
    assert logged.refused and str(logged.refusal_layer) == "retrieval_gate"
    assert logged.chunks and all(c.score < api.settings.min_retrieval_score for c in logged.chunks)


def test_streaming_sends_tokens_then_a_final_event(lenient_api):
    resp = chat(lenient_api, ANSWERABLE, stream=True)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    names = [e[0] for e in events]
    assert names[-1] == "done" and names.count("done") == 1 and "token" in names
    final = events[-1][1]
    streamed = "".join(d["text"] for n, d in events if n == "token")
    assert final["answer_id"] and "citations" in final and "grounded" in final
    if not final["refused"]:
        assert streamed.strip() == final["answer"]
    assert lenient_api.services.store.get_answer(final["answer_id"]).answer == final["answer"]


def test_streaming_holds_tokens_when_grounding_may_withdraw(api):
    resp = chat(api, ANSWERABLE, stream=True)
    events = sse_events(resp.text)
    tokens = [d["text"] for n, d in events if n == "token"]
    final = events[-1][1]
    # held: exactly one token event, equal to the final (possibly withdrawn) answer
    assert tokens == [final["answer"]]


def test_follow_up_uses_history_for_retrieval(lenient_api):
    history = [
        {"role": "user", "content": "Tell me about Candor's vector database."},
        {"role": "assistant", "content": "Candor stores chunks in Chroma."},
    ]
    resp = chat(lenient_api, "Is it open source?", history=history)
    assert resp.status_code == 200, resp.text
    logged = lenient_api.services.store.get_answer(resp.json()["answer_id"])
    assert "vector database" in logged.retrieval_query and logged.history == history


def test_openai_route_with_the_official_client(lenient_api):
    import openai

    client = openai.OpenAI(
        base_url="http://testserver/v1", api_key=lenient_api.user_key, http_client=lenient_api.client
    )
    done = client.chat.completions.create(model=COLLECTION, messages=[{"role": "user", "content": ANSWERABLE}])
    assert done.choices[0].message.content.strip()
    extras = done.model_extra["candor"]
    assert extras["answer_id"] and isinstance(extras["citations"], list)

    chunks = list(
        client.chat.completions.create(model=COLLECTION, messages=[{"role": "user", "content": OFF_TOPIC}], stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "I don't know based on the provided documents."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["candor"]["refusal_layer"] == "retrieval_gate"

    models = client.models.list()
    assert COLLECTION in [m.id for m in models.data]


def test_model_server_down_is_503_and_logged_as_failure(tmp_path, handbook_chroma, base_model_dir, shared_models):
    from fixtures.api import make_harness as mk

    h = mk(tmp_path, handbook_chroma, "http://127.0.0.1:9", base_model_dir, shared_models)
    with h.client:
        resp = chat(h, ANSWERABLE)
        assert resp.status_code == 503 and resp.headers.get("retry-after")
        assert "error" in resp.json()
        ready = h.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["model_server"].startswith("unavailable")
        assert ready.json()["checks"]["database"] == "ok" and ready.json()["checks"]["chroma"] == "ok"
        failed = h.services.store.list_answers(status="failed").items
        assert len(failed) == 1 and failed[0].error and failed[0].question == ANSWERABLE
        assert failed[0].answer is None and h.services.store.list_answers(status="ok").items == []


def test_readyz_and_metrics(api):
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"chroma": "ok", "database": "ok", "model_server": "ok"}
    chat(api, OFF_TOPIC)
    metrics = api.client.get("/metrics", headers=api.headers(api.admin_key)).text
    assert 'candor_answers_total{adapter="",collection="handbook",layer="retrieval_gate",refused="true"}' in metrics
    assert "candor_http_requests_total" in metrics
