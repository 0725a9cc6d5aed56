"""The reader layer in the served path: real reader, real Chroma, real model server, real answer log."""

from __future__ import annotations

import pytest
from fixtures.api import COLLECTION, make_harness
from test_api_chat import sse_events

pytestmark = pytest.mark.slow

ANSWERABLE = "Which embedding model does Candor use?"


def layer_harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, layer, path, threshold):
    """The API with one answerability layer (``layer``: "reader" or "verifier") at ``threshold``, grounding off."""
    paths = {f"{layer}_path": path, f"{layer}_threshold": threshold}
    return make_harness(
        tmp_path, handbook_chroma, model_server.url, base_model_dir, shared_models, grounding_enforce=False, **paths
    )


def _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, reader, threshold):
    return layer_harness(
        tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, "reader", reader, threshold
    )


def ask(h, stream: bool = False):
    """The answerable handbook question, through /v1/chat."""
    body = {"question": ANSWERABLE, "collection": COLLECTION, "stream": stream}
    return h.client.post("/v1/chat", json=body, headers=h.headers())


_ask = ask


def refused_before_generation(h, layer: str) -> tuple[dict, dict]:
    """Ask: ``layer`` refuses before the model is called. (The answer, its record in the answer log.)"""
    body = ask(h).json()
    assert body["refused"] is True and body["refusal_layer"] == layer
    assert body["timings_ms"]["generation"] == 0.0 and body["timings_ms"]["verifier"] > 0
    logged = h.client.get(f"/v1/answers/{body['answer_id']}", headers=h.headers()).json()
    assert logged["refusal_layer"] == layer and logged["raw_answer"] is None  # no generation happened
    return body, logged


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
        body, logged = refused_before_generation(h, "reader")
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


def test_a_labelled_question_set_is_measured_through_the_answer_core(
    tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_reader
):
    import json

    from candor.finetune.question_set_eval import load_question_set, repeats_a_sentence, run_question_set_eval
    from candor.reader import AnswerabilityReader

    h = _harness(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_reader, None)
    rows = [
        {"id": "a", "question": ANSWERABLE, "answers": ["all-MiniLM-L6-v2"], "is_impossible": False},
        {"id": "n", "question": "Which GPU does Candor need?", "answers": [], "is_impossible": True, "kind": "near"},
        {"id": "o", "question": "What is the boiling point of mercury?", "answers": []},
    ]
    qfile = tmp_path / "set.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [q.kind for q in load_question_set(qfile)] == ["answerable", "near", "unanswerable"]
    reader = AnswerabilityReader(tiny_reader, h.settings.resolved_embed_model_path)
    out = tmp_path / "report.json"
    run = run_question_set_eval(
        h.settings, {"base": "base"}, qfile, COLLECTION, out, answerability=reader, threshold=0.0,
        llm_url=model_server.url, n_boot=10,
    )  # fmt: skip
    res = run["models"]["base"]
    assert [a["id"] for a in res["answers"]] == ["a", "n", "o"]
    # threshold 0: the reader (or, before it, the retrieval gate) refuses all three; nothing is generated
    assert res["model_only"]["refused_rate"] == 1.0 and set(res["refusal_layers"]) <= {"reader", "retrieval_gate"}
    assert res["model_only"]["hallucination_rate"] == 0.0 and res["model_only"]["over_refusal"] == 1.0
    assert "| near |" in out.with_suffix(".md").read_text()
    assert repeats_a_sentence("I'm glad to help. I'm glad to help.") and not repeats_a_sentence("One two three. Four.")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answers": [], "is_impossible": False}) + "\n")
    with pytest.raises(Exception, match="gold answers"):
        load_question_set(bad)
