"""The reader layer in the served path: real reader, real Chroma, real model server, real answer log."""

from __future__ import annotations

import pytest
from fixtures.api import COLLECTION, make_harness
from test_api_chat import sse_events

pytestmark = pytest.mark.slow

ANSWERABLE = "Which embedding model does Candor use?"


def _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, reader, threshold):
    return make_harness(
        tmp_path,
        handbook_chroma,
        model_server.url,
        base_model_dir,
        shared_models,
        reader_path=reader,
        reader_threshold=threshold,
        grounding_enforce=False,
    )


def _ask(h, stream: bool = False):
    body = {"question": ANSWERABLE, "collection": COLLECTION, "stream": stream}
    return h.client.post("/v1/chat", json=body, headers=h.headers())


def _check_evidence(ev: dict, logged: dict) -> None:
    """The evidence names a passage the prompt held, and its span indexes into that passage."""
    sent = {c["chunk_id"]: c for c in logged["chunks"] if c["prompt_text"] is not None}
    assert ev["chunk_id"] in sent and ev["passage"] == sent[ev["chunk_id"]]["prompt_text"]
    assert 0.0 <= ev["score"] <= 1.0
    assert ev["score"] == pytest.approx(max(c["answerable"] for c in sent.values()), abs=1e-4)
    if ev["start"] is not None:
        assert ev["passage"][ev["start"] : ev["end"]] == ev["text"] and ev["text"]
        chunk = sent[ev["chunk_id"]]
        assert (chunk["evidence_start"], chunk["evidence_end"]) == (ev["start"], ev["end"])


def test_the_reader_refuses_before_the_model_and_shows_its_evidence(
    tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_reader
):
    h = _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_reader, 0.0)
    with h.client:
        body = _ask(h).json()
        assert body["refused"] is True and body["refusal_layer"] == "reader"
        assert body["timings_ms"]["generation"] == 0.0 and body["timings_ms"]["verifier"] > 0
        logged = h.client.get(f"/v1/answers/{body['answer_id']}", headers=h.headers()).json()
        assert logged["refusal_layer"] == "reader" and logged["raw_answer"] is None
        assert logged["answerability_model"].startswith("final@") and logged["answerability_threshold"] == 0.0
        assert all(c["answerable"] is not None for c in logged["chunks"] if c["prompt_text"] is not None)
        _check_evidence(body["evidence"], logged)
        events = sse_events(_ask(h, stream=True).text)
        assert events[-1][0] == "done" and events[-1][1]["refusal_layer"] == "reader"
        assert events[-1][1]["evidence"]["chunk_id"] == body["evidence"]["chunk_id"]
        openai = h.client.post(
            "/v1/chat/completions",
            json={"model": COLLECTION, "messages": [{"role": "user", "content": ANSWERABLE}]},
            headers=h.headers(),
        ).json()
        assert openai["candor"]["refusal_layer"] == "reader"
        assert openai["candor"]["evidence"]["chunk_id"] == body["evidence"]["chunk_id"]


def test_a_passing_reader_hands_over_to_the_model_with_its_confidence(
    tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_reader
):
    from candor.reader import AnswerabilityReader

    h = _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_reader, 1.0)
    with h.client:
        body = _ask(h).json()
        assert body["refusal_layer"] != "reader" and body["timings_ms"]["generation"] > 0
        logged = h.client.get(f"/v1/answers/{body['answer_id']}", headers=h.headers()).json()
    _check_evidence(body["evidence"], logged)
    contexts = [c["prompt_text"] for c in logged["chunks"] if c["prompt_text"] is not None]
    reader = AnswerabilityReader(tiny_reader, h.settings.resolved_embed_model_path)
    p = reader.answerable_probability(ANSWERABLE, contexts)
    assert body["refusal_confidence"] == pytest.approx(1.0 - p, abs=2e-3)


def test_reader_and_verifier_together_is_a_settings_error(tiny_reader, tiny_verifier):
    from candor.settings import Settings, SettingsError, load_settings

    with pytest.raises((SettingsError, ValueError), match="not both"):
        load_settings(reader_path=tiny_reader, verifier_path=tiny_verifier)
    assert Settings(reader_path="  ").reader_path is None  # blank is unset (compose passes empty variables)
