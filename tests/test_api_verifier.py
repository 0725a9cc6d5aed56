"""The verifier layer in the served path: real verifier, real Chroma, real model server, real answer log."""

from __future__ import annotations

import pytest
from test_api_chat import sse_events
from test_api_reader import ANSWERABLE, layer_harness, refused_before_generation
from test_api_reader import ask as _ask

pytestmark = pytest.mark.slow


def _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, verifier, threshold):
    args = (tmp_path, handbook_chroma, model_server, base_model_dir, shared_models)
    return layer_harness(*args, "verifier", verifier, threshold)


def test_the_verifier_refuses_before_the_model_is_called(
    tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_verifier
):
    h = _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_verifier, 0.0)
    with h.client:
        body, _ = refused_before_generation(h, "verifier")
        assert body["answer"] == "I don't know based on the provided documents." and body["citations"] == []
        assert 0.0 <= body["refusal_confidence"] <= 1.0
        streamed = _ask(h, stream=True)
        assert streamed.status_code == 200
        events = sse_events(streamed.text)
        assert events[-1][0] == "done" and events[-1][1]["refusal_layer"] == "verifier"
        assert "".join(d["text"] for n, d in events if n == "token") == body["answer"]


def test_a_passing_verifier_hands_over_to_the_model_and_sets_the_confidence(
    tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_verifier
):
    from candor.answerability import AnswerabilityVerifier

    h = _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_verifier, 1.0)
    with h.client:
        body = _ask(h).json()
        assert body["refusal_layer"] != "verifier"
        assert body["timings_ms"]["generation"] > 0  # the model answered (or refused by itself)
        logged = h.client.get(f"/v1/answers/{body['answer_id']}", headers=h.headers()).json()
    contexts = [c["prompt_text"] for c in logged["chunks"] if c["prompt_text"] is not None]
    verifier = AnswerabilityVerifier(tiny_verifier, h.settings.resolved_embed_model_path)
    p = verifier.answerable_probability(ANSWERABLE, contexts)
    assert body["refusal_confidence"] == pytest.approx(1.0 - p, abs=2e-3)
    # thresholds just either side of the measured confidence: the gate's direction, not only its extremes
    c = body["refusal_confidence"]
    if c >= 0.02:
        below = _harness(
            tmp_path / "below", handbook_chroma, model_server, base_model_dir, shared_models, tiny_verifier, c - 0.01
        )
        with below.client:
            assert _ask(below).json()["refusal_layer"] == "verifier"
    if c <= 0.98:
        above = _harness(
            tmp_path / "above", handbook_chroma, model_server, base_model_dir, shared_models, tiny_verifier, c + 0.01
        )
        with above.client:
            assert _ask(above).json()["refusal_layer"] != "verifier"
