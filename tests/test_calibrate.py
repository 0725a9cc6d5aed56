"""`candor calibrate --collection handbook`: a collection's own threshold from its reviewed flags.

Real parts: the handbook in Chroma, the shipped reader, a SQLite answer log holding the answers as the
answer core logs them (the passages shown, the reader's verdict per passage) and users' flags, approved by
review. Two thirds of the handbook's labelled questions are flagged (errors as `wrong_refusal` /
`should_have_refused`, right decisions confirmed as `correct`); the whole set (63 questions) is then
decided at the chosen threshold. The command must bring over-refusal and hallucination both to at most
0.15 on it, or say by how much it misses; the API then reports the collection's threshold and its source.
"""

from __future__ import annotations

import json

import pytest
from fixtures.api import COLLECTION, make_harness
from fixtures.core import REPO_ROOT

from candor.cli.main import main
from candor.decision import READER, decide
from candor.feedback.store import AnswerStore
from candor.reader import AnswerabilityReader
from candor.refusal_score import refusal_confidence
from candor.retrain.run import recalibrate
from candor.settings import get_settings

pytestmark = pytest.mark.slow

SHIPPED_READER = REPO_ROOT / "models" / "candor-reader"
QUESTIONS = REPO_ROOT / "samples" / "handbook.questions.jsonl"
REFUSAL = "I don't know based on the provided documents."


def _log_flagged_answers(settings, retriever, reader) -> int:
    """Answers to two thirds of the handbook questions, logged with their passages and the reader's verdict,
    each flagged by one of five untrusted keys and approved by review."""
    store = AnswerStore(settings)
    store.migrate()
    # five users (untrusted keys): a run takes at most loop.poisoning.max_flags_per_key (20) flags per key
    keys = [store.create_key(f"user-{k}", role="user", trusted=False)[0] for k in range(5)]
    threshold = reader.threshold
    flags = []
    for i, line in enumerate(QUESTIONS.read_text().splitlines()):
        if i % 3 == 0:
            continue
        q, key_id = json.loads(line), keys[i % 5]
        chunks = retriever.retrieve(q["question"], COLLECTION, settings.top_k)
        evidence = reader.read(q["question"], [c.text for c in chunks])
        p = max(ev.answerable for ev in evidence)
        refused = decide(refusal_confidence(None, [c.score for c in chunks], p), threshold, layer=READER) is not None
        record = {
            "question": q["question"], "collection": COLLECTION, "history": [], "history_in_prompt": 0,
            "retrieval_query": q["question"], "prompt_version": "candor-v1", "rendered_prompt": "(not rendered)",
            "model_base": "SmolLM2-135M-Instruct", "adapter": None, "adapter_version": None,
            "answer": REFUSAL if refused else (q["answers"] or ["Yes."])[0],
            "raw_answer": None, "refused": refused, "refusal_layer": "reader" if refused else None,
            "refusal_confidence": None, "grounded": None, "grounding_support": None,
            "answerability_model": reader.version, "answerability_threshold": threshold,
            "timings_ms": {}, "api_key_id": key_id,
            "chunks": [
                {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "source": c.source, "title": c.title, "score": c.score,
                 "text": c.text, "prompt_text": c.text, "answerable": ev.answerable,
                 "evidence_start": None if ev.start < 0 else ev.start, "evidence_end": None if ev.start < 0 else ev.end}
                for c, ev in zip(chunks, evidence, strict=True)
            ],
        }  # fmt: skip
        answer_id = store.log_answer(record)
        if q["is_impossible"]:
            verdict = "correct" if refused else "should_have_refused"
        else:
            verdict = "wrong_refusal" if refused else "correct"
        correction = q["answers"][0] if verdict == "wrong_refusal" else None
        flags.append(store.add_feedback(answer_id, verdict, correction=correction, api_key_id=key_id).id)
    store.review_flags(flags, "approved", reviewer="test")
    store.close()
    return len(flags)


def test_calibrate_sets_the_collections_threshold_and_the_api_reports_it(
    settings, monkeypatch, capsys, handbook_chroma, shared_models, model_server, base_model_dir, tmp_path
):
    monkeypatch.setenv("CANDOR_CHROMA_PATH", str(handbook_chroma))
    monkeypatch.setenv("CANDOR_READER_PATH", str(SHIPPED_READER))
    get_settings.cache_clear()
    s = get_settings()
    reader = AnswerabilityReader(SHIPPED_READER, s.resolved_embed_model_path)
    n = _log_flagged_answers(s, shared_models.retriever, reader)
    assert n == 42

    assert main(["calibrate", "--collection", "nowhere"]) == 2  # no flags there: a message, not a traceback
    assert "usable reviewed flag(s)" in capsys.readouterr().err

    assert main(["calibrate", "--collection", COLLECTION, "--questions", str(QUESTIONS), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    after = report["question_set"]["after"]
    worst = max(after["over_refusal"], after["hallucination_rate"])
    text = "\n".join(report["lines"])
    if worst <= 0.15:
        assert "misses" not in text.splitlines()[-1]
    else:
        assert f"misses the target 0.15 by {worst - 0.15:.3f}" in text
    assert report["stored"] and report["threshold"] != reader.threshold

    assert main(["feedback", "threshold", "-c", COLLECTION, "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["source"] == "calibration" and shown["threshold"] == report["threshold"]
    assert shown["calibration"]["flags"] == report["flags"] and shown["calibration"]["applies"] is True

    # after a reader promotion `candor retrain` calibrates such a collection again (here: the same reader)
    again = recalibrate(s, SHIPPED_READER, lambda line: None)
    assert again[COLLECTION]["threshold"] == report["threshold"]
    store = AnswerStore(s)
    assert store.get_collection_threshold(COLLECTION).source == "loop"
    store.close()

    # the API applies and reports it, and logs it with every decision on that collection
    h = make_harness(
        tmp_path / "api", handbook_chroma, model_server.url, base_model_dir, shared_models,
        reader_path=SHIPPED_READER, database_url=s.resolved_database_url,
    )  # fmt: skip
    with h.client:
        body = h.client.get(f"/v1/collections/{COLLECTION}/threshold", headers=h.headers()).json()
        assert body["threshold"] == report["threshold"] and body["source"] == "calibration"
        assert body["calibration"]["over_refusal"] == report["chosen"]["over_refusal"]
        q = "How many languages does Candor's user interface support?"
        answer = h.client.post("/v1/chat", json={"question": q, "collection": COLLECTION}, headers=h.headers())
        logged = h.client.get(f"/v1/answers/{answer.json()['answer_id']}", headers=h.headers()).json()
        assert logged["answerability_threshold"] == report["threshold"]
        assert h.client.get("/v1/collections/bad name!/threshold", headers=h.headers()).status_code in (404, 422)
        # the reader's routes are an admin's, as the adapters' are
        assert h.client.post("/v1/readers/reload", headers=h.headers()).status_code == 403
        assert h.client.post("/v1/readers/rollback", headers=h.headers()).status_code == 403
        assert h.client.get("/v1/readers", headers=h.headers(h.admin_key)).json()["answerability"]["layer"] == "reader"
    with capsys.disabled():
        print("\n".join(report["lines"]))
