"""Logging answers and failures, reading them back, listing with pagination (SQLite and Postgres)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fixtures.store import answer_record, refusal_record

from candor.errors import ConflictError, InvalidInputError, NotFoundError
from candor.feedback.schemas import AnswerStatus, NewAnswer, RefusalLayer, chunks_for_log, content_hash
from candor.prompts import ContextChunk, build_messages, fit_messages


def test_answer_round_trips_every_field(store):
    rec = answer_record()
    answer_id = store.log_answer(rec)
    a = store.get_answer(answer_id)
    assert a.id == answer_id and a.status is AnswerStatus.OK
    assert a.created_at.tzinfo is not None and abs(a.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    for field in ("question", "collection", "history", "history_in_prompt", "retrieval_query", "prompt_version"):
        assert getattr(a, field) == rec[field], field
    assert (a.model_base, a.adapter, a.adapter_version) == ("SmolLM2-135M-Instruct", "candor-refusal", "a1b2c3d4")
    assert (a.answer, a.raw_answer, a.refused, a.refusal_layer) == ("Rollo.", "Rollo.", False, None)
    assert (a.refusal_confidence, a.grounded, a.grounding_support) == (0.12, True, 1.0)
    assert (a.timings_ms.retrieval, a.timings_ms.generation, a.timings_ms.total) == (12.5, 340.0, 360.2)
    assert a.rendered_prompt == rec["rendered_prompt"] and a.meta == {"top_k": 4}
    assert [c.chunk_id for c in a.chunks] == ["c-1", "c-2", "c-3"]
    assert [c.rank for c in a.chunks] == [0, 1, 2]
    assert [c.in_prompt for c in a.chunks] == [True, True, False]
    assert a.chunks[1].prompt_text == "Their identity emerged in the first half ..."  # trimmed copy kept
    assert a.chunks[2].text == rec["chunks"][2]["text"]
    assert all(c.text_sha256 == content_hash(c.text) for c in a.chunks)
    assert a.flags == []
    assert a.to_dict()["created_at"].endswith("Z")


def test_the_logged_prompt_rebuilds_exactly_after_trimming(store):
    """The retraining pipeline must rebuild the prompt from the log, trimmed chunk and all."""
    retrieved = [
        type("C", (), dict(chunk_id=f"c{i}", doc_id=f"d{i}", source="s", score=0.9 - i / 10, title=f"T{i}", text=t))()
        for i, t in enumerate(["alpha beta gamma " * 20, "delta epsilon zeta " * 20, "eta theta " * 20])
    ]
    history = [{"role": "user", "content": "earlier question"}, {"role": "assistant", "content": "earlier answer"}]
    words = lambda msgs: sum(len(m["content"].split()) for m in msgs)  # noqa: E731
    fitted = fit_messages("the question?", [ContextChunk(c.text, c.title) for c in retrieved], history, words, 120)
    assert fitted.n_trimmed == 1 or fitted.n_dropped >= 1
    rec = NewAnswer(
        question="the question?",
        collection="docs",
        answer="alpha",
        refused=False,
        history=history,
        history_in_prompt=fitted.history_turns,
        chunks=chunks_for_log(retrieved, fitted.chunks),
        prompt_version="candor-v1",
        model_base="m",
    )
    a = store.get_answer(store.log_answer(rec))
    assert a.rebuild_messages() == fitted.messages
    assert a.rebuild_messages() == build_messages(
        "the question?", fitted.chunks, history[len(history) - fitted.history_turns :]
    )
    assert len(a.chunks) == 3 and sum(c.in_prompt for c in a.chunks) == len(fitted.chunks)


def test_refusal_records_its_layer(store):
    a = store.get_answer(store.log_answer(refusal_record(refusal_layer="retrieval_gate")))
    assert a.refused is True and a.refusal_layer is RefusalLayer.RETRIEVAL_GATE and a.chunks == []


def test_failure_is_logged_as_failure_not_answer(store):
    failure_id = store.log_failure(
        {
            "question": "q",
            "collection": "docs",
            "error": "LLMUnavailable: model server at http://127.0.0.1:8080 is down",
            "prompt_version": "candor-v1",
            "model_base": "m",
            "chunks": answer_record()["chunks"],
        }
    )
    a = store.get_answer(failure_id)
    assert a.status is AnswerStatus.FAILED and a.answer is None and a.refused is None
    assert "is down" in a.error and len(a.chunks) == 3
    assert [x.id for x in store.list_answers(status="failed").items] == [failure_id]
    assert store.list_answers(status="ok").items == []
    with pytest.raises(InvalidInputError, match="nothing to flag"):
        store.add_feedback(failure_id, "hallucination")


def test_preallocated_id_is_used_once(store):
    answer_id = store.new_answer_id()
    assert store.log_answer(answer_record(answer_id=answer_id)) == answer_id
    with pytest.raises(ConflictError):
        store.log_answer(answer_record(answer_id=answer_id))
    with pytest.raises(InvalidInputError, match="invalid answer id"):
        store.log_answer(answer_record(answer_id="not-an-id"))


def test_bad_records_are_invalid_input_and_store_nothing(store):
    with pytest.raises(InvalidInputError, match="refusal_layer"):
        store.log_answer(answer_record(refused=True, refusal_layer=None))
    with pytest.raises(InvalidInputError, match="question"):
        store.log_answer({k: v for k, v in answer_record().items() if k != "question"})
    with pytest.raises(InvalidInputError, match="API key"):
        store.log_answer(answer_record(api_key_id="01J000000000000000000000ZZ"))
    duplicate_ranks = [dict(c, rank=0) for c in answer_record()["chunks"]]
    with pytest.raises(InvalidInputError, match="ranks"):
        store.log_answer(answer_record(chunks=duplicate_ranks))
    assert store.list_answers().items == []


def test_unknown_answer_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.get_answer("01J000000000000000000000ZZ")
    with pytest.raises(NotFoundError):
        store.add_feedback("01J000000000000000000000ZZ", "correct")


def test_list_filters(store, make_answer):
    key_id, _ = store.create_key("bob", "user", None, False)
    a1 = make_answer(collection="docs")
    a2 = make_answer(collection="other", api_key_id=key_id)
    a3 = make_answer(refused=True, collection="docs")
    store.add_feedback(a1, "hallucination")
    store.add_feedback(a3, "wrong_refusal")
    ids = lambda **kw: [a.id for a in store.list_answers(**kw).items]  # noqa: E731
    assert ids() == [a3, a2, a1]  # newest first
    assert ids(flagged=True) == [a3, a1]
    assert ids(flagged=False) == [a2]
    assert ids(verdict="hallucination") == [a1]
    assert ids(collection="docs") == [a3, a1]
    assert ids(collections=["other"]) == [a2]
    assert ids(api_key_id=key_id) == [a2]
    assert ids(refused=True) == [a3]
    assert ids(refused=False) == [a2, a1]
    assert ids(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert ids(since=datetime.now(UTC) - timedelta(minutes=1)) == [a3, a2, a1]
    assert store.list_answers(flagged=True).items[1].flags[0].verdict.value == "hallucination"
    with pytest.raises(InvalidInputError, match="verdict"):
        store.list_answers(verdict="lies")
    with pytest.raises(InvalidInputError, match="cursor"):
        store.list_answers(cursor="garbage")
    with pytest.raises(InvalidInputError, match="limit"):
        store.list_answers(limit=0)
    with pytest.raises(InvalidInputError, match="time zone"):
        store.list_answers(since=datetime.now())


def test_pagination_is_stable_while_answers_arrive(store, make_answer):
    first = [make_answer(question=f"q{i}") for i in range(7)]
    page = store.list_answers(limit=3)
    seen = [a.id for a in page.items]
    make_answer(question="arrives meanwhile")  # newer: must not shift later pages
    while page.next_cursor:
        page = store.list_answers(limit=3, cursor=page.next_cursor)
        seen += [a.id for a in page.items]
    assert seen == list(reversed(first))
