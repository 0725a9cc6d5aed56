"""The retraining export: deterministic JSONL with the exact prompt context of each flag."""

from __future__ import annotations

import json

from fixtures.store import answer_record

from candor.feedback.export import EXPORT_FORMAT


def _flagged(store, make_answer):
    key, _ = store.create_key("untrusted", "user", None, trusted=False)
    a1 = make_answer(question="Who founded the Normans?")
    a2 = make_answer(refused=True, question="What year was Fresno founded?", collection="fresno")
    a3 = make_answer(question="What is oxygen?")
    f1 = store.add_feedback(a1, "hallucination", correction="Rollo", comment="wrong name")
    f2 = store.add_feedback(a2, "wrong_refusal", correction="1872")
    f3 = store.add_feedback(a3, "hallucination", api_key_id=key)  # pending: not for training
    return (a1, a2, a3), (f1, f2, f3), key


def test_export_rows_carry_what_training_needs(store, make_answer):
    (a1, a2, _), (f1, f2, _), _ = _flagged(store, make_answer)
    rows = list(store.export_flags())
    assert [r["flag_id"] for r in rows] == [f1.id, f2.id]  # approved only, in flag order
    r = rows[0]
    rec = answer_record()
    assert r["format"] == EXPORT_FORMAT
    assert (r["answer_id"], r["verdict"], r["correction"], r["comment"]) == (a1, "hallucination", "Rollo", "wrong name")
    assert r["question"] == "Who founded the Normans?" and r["collection"] == "docs"
    assert r["history"] == rec["history"] and r["prompt_version"] == "candor-v1"
    # exactly the passages the prompt held: trimmed text kept, dropped chunk left out
    assert [c["text"] for c in r["contexts"]] == [c["prompt_text"] for c in rec["chunks"][:2]]
    assert [c["title"] for c in r["contexts"]] == ["Normans", "Normans"]
    assert (r["answer"], r["refused"], r["adapter"], r["adapter_version"]) == (
        "Rollo.",
        False,
        "candor-refusal",
        "a1b2c3d4",
    )
    assert r["flagged_at"].endswith("Z") and r["answered_at"].endswith("Z")
    assert rows[1]["refused"] is True and rows[1]["refusal_layer"] == "retrieval_gate" and rows[1]["contexts"] == []


def test_export_filters(store, make_answer):
    _, (f1, f2, f3), key = _flagged(store, make_answer)
    ids = lambda **kw: [r["flag_id"] for r in store.export_flags(**kw)]  # noqa: E731
    assert ids(review_statuses=["approved", "pending"]) == [f1.id, f2.id, f3.id]
    assert ids(verdicts=["wrong_refusal"]) == [f2.id]
    assert ids(collections=["fresno"]) == [f2.id]
    store.review_flags([f3.id], "approved")
    assert ids() == [f1.id, f2.id, f3.id]
    store.review_flags([f1.id], "rejected")
    assert ids() == [f2.id, f3.id]


def test_export_file_is_byte_identical_and_survives_updates(store, make_answer, tmp_path):
    _flagged(store, make_answer)
    p1, p2 = tmp_path / "a" / "flags.jsonl", tmp_path / "b.jsonl"
    assert store.write_export(p1) == 2
    # a client retrying the same flag changes nothing in the export
    row = json.loads(p1.read_text().splitlines()[0])
    store.add_feedback(row["answer_id"], "hallucination", correction="Rollo", comment="wrong name")
    assert store.write_export(p2) == 2
    assert p1.read_bytes() == p2.read_bytes()
    assert all(json.loads(line)["flag_id"] for line in p1.read_text().splitlines())
    assert not list(tmp_path.glob("**/.*.tmp"))  # atomic write leaves no temp file


def test_export_pages_through_many_flags_in_order(store, make_answer, monkeypatch):
    from candor.feedback import export

    monkeypatch.setattr(export, "BATCH", 4)  # force several batches
    flags = [store.add_feedback(make_answer(question=f"q{i}"), "hallucination").id for i in range(10)]
    assert [r["flag_id"] for r in store.export_flags()] == flags


def test_export_keeps_the_context_copy_after_the_documents_change(store, make_answer):
    """Each answer keeps its own copy: a re-ingested chunk (same id, new text) does not rewrite history."""
    old = answer_record()["chunks"]
    first = make_answer(chunks=old)
    changed = [dict(c, text=c["text"] + " (edited)", prompt_text=c["text"] + " (edited)") for c in old[:1]]
    second = make_answer(chunks=changed)
    store.add_feedback(first, "hallucination")
    store.add_feedback(second, "hallucination")
    rows = {r["answer_id"]: r for r in store.export_flags()}
    c_old, c_new = rows[first]["contexts"][0], rows[second]["contexts"][0]
    assert c_old["chunk_id"] == c_new["chunk_id"] == "c-1"
    assert c_old["text"] == old[0]["text"] and c_new["text"].endswith("(edited)")
    assert c_old["text_sha256"] != c_new["text_sha256"]
