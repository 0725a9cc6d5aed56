"""The reader's side of the loop: flags → reader labels (poisoning screened), the reader registry, the
threshold a collection gets, and calibration's choice. Real reader folders (the tiny reader), no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.loop import CONTEXT, flag_row

from candor.decision import CALIBRATION, READER, SETTING, VALIDATION, threshold_source
from candor.errors import ConflictError, InvalidInputError, NotFoundError
from candor.finetune.reader import ReaderConfig, read_extra_examples
from candor.retrain.calibrate import Case, choose, rates
from candor.retrain.loop_params import PoisoningParams
from candor.retrain.poisoning import screen_flags
from candor.retrain.reader_labels import build_reader_labels, find_span
from candor.retrain.reader_loop import reader_loop_params
from candor.retrain.readers import ReaderRegistry, ensure_current_reader
from candor.settings import Settings

OTHER = "The tower is repainted every seven years; it was the tallest structure until 1930."


def _two(**kw):
    ctx = [{"text": CONTEXT, "title": "Eiffel", "score": 0.6}, {"text": OTHER, "title": "Paint", "score": 0.5}]
    return flag_row(contexts=ctx, **kw)


def test_should_have_refused_labels_every_shown_passage_no_answer() -> None:
    res = build_reader_labels([_two(flag_id="f1", verdict="should_have_refused")])
    assert [(e.context, e.answerable) for e in res.examples] == [(CONTEXT, False), (OTHER, False)]
    assert res.regression[0]["expect"] == "refuse" and res.regression[0]["scores"] == [0.6, 0.5]


def test_wrong_refusal_with_a_correction_marks_its_span_in_the_passage_that_holds_it() -> None:
    res = build_reader_labels([_two(flag_id="f1", verdict="wrong_refusal", correction="1889", refused=True)])
    (ex,) = res.examples
    assert ex.context == CONTEXT and ex.answer_text == "1889"
    assert CONTEXT[ex.answer_start : ex.answer_start + 4] == "1889"
    assert res.stats["by_reason"] == {"answer_span_found": 1}


def test_a_confirmed_answer_is_found_without_its_wrapping() -> None:
    assert find_span("The answer is 1889.", CONTEXT) == ("1889", CONTEXT.index("1889"))
    res = build_reader_labels([_two(flag_id="f1", verdict="correct", answer="The answer is 1889.")])
    assert [e.answer_text for e in res.examples] == ["1889"]


def test_an_answer_without_a_reference_uses_the_logged_evidence_span_or_is_left_unlabelled() -> None:
    start = CONTEXT.index("1889")
    ctx = [{"text": CONTEXT, "score": 0.6, "answerable": 0.3, "evidence_start": start, "evidence_end": start + 4}]
    logged = build_reader_labels([flag_row("f1", "wrong_refusal", contexts=ctx, refused=True)])
    assert [(e.answer_text, e.answer_start) for e in logged.examples] == [("1889", start)]
    bare = build_reader_labels([flag_row("f2", "wrong_refusal", refused=True)])
    assert bare.examples == [] and bare.stats["by_reason"] == {"answerable_without_span": 1}
    assert bare.regression[0]["trained"] is False and bare.regression[0]["expect"] == "answer"


def test_poisoning_defences_screen_reader_labels_as_they_screen_pairs() -> None:
    rows = [flag_row(f"a{i}", "should_have_refused", question=f"Q{i}?", api_key_id="attacker") for i in range(4)]
    rows += [
        flag_row("p1", "should_have_refused", question="Pending?", review_status="pending"),
        flag_row("c1", "wrong_refusal", question="Fought?", correction="1889", api_key_id="k1"),
        flag_row("c2", "should_have_refused", question="Fought?", api_key_id="k2"),
    ]
    screened = screen_flags(rows, PoisoningParams(max_flags_per_key=2))
    res = build_reader_labels(screened.kept)
    assert res.stats["flag_ids"] == ["a0", "a1"]  # cap of 2 per key; pending and the conflicting pair dropped
    assert {e.id.split(":")[1] for e in res.examples} == {"a0", "a1"}


def test_extra_examples_are_checked_against_their_passage(tmp_path: Path) -> None:
    good = {"id": "x", "question": "When?", "context": CONTEXT, "answer_text": "1889",
            "answer_start": CONTEXT.index("1889"), "kind": "flag_answerable", "article": "docs"}  # fmt: skip
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(good | {"answer_start": 0}) + "\n")
    with pytest.raises(InvalidInputError, match=":2: answer_text is not at answer_start"):
        read_extra_examples(path)
    with pytest.raises(InvalidInputError, match="exclude each other"):
        ReaderConfig(init_from="v", init_from_reader="r")


def test_reader_loop_params_reject_unknown_keys() -> None:
    with pytest.raises(InvalidInputError, match="unknown keys"):
        reader_loop_params({"reader_loop": {"replay": 3}})
    with pytest.raises(InvalidInputError, match="unknown reader settings"):
        reader_loop_params({"reader_loop": {"train": {"steps": 3}}})
    assert reader_loop_params({}).gate.max_over_refusal_rise == 0.03


def test_the_setting_comes_first_then_the_collections_calibration_then_validation() -> None:
    s = Settings()
    assert threshold_source(s, READER, 0.4) == (0.4, VALIDATION)
    assert threshold_source(s, READER, 0.4, calibrated=0.7) == (0.7, CALIBRATION)
    configured = s.model_copy(update={"reader_threshold": 0.5})
    assert threshold_source(configured, READER, 0.4, calibrated=0.7) == (0.5, SETTING)
    assert threshold_source(s, READER, None) == (None, None)


def test_calibration_chooses_the_minimax_threshold_and_reports_the_trade_off() -> None:
    cases = [Case(f"a{i}", False, c) for i, c in enumerate([0.1, 0.2, 0.3, 0.6])]
    cases += [Case(f"r{i}", True, c) for i, c in enumerate([0.5, 0.7, 0.8, 0.9])]
    chosen, table = choose(cases, validation=0.3)
    assert chosen["over_refusal"] == 0.25 and chosen["hallucination_rate"] == 0.0  # 0.55 < t <= 0.6 is not better
    assert 0.3 < chosen["threshold"] <= 0.5
    assert rates(cases, 0.3)["over_refusal"] == 0.5  # the validation threshold refused half the answerable
    assert len(table) == 9


def test_reader_registry_promotes_rolls_back_and_keeps_lineage(tmp_path: Path, tiny_reader: Path) -> None:
    import shutil

    settings = Settings(data_dir=tmp_path, reader_path=tiny_reader)
    reg = ReaderRegistry.for_settings(settings)
    first = ensure_current_reader(settings, reg)
    assert first is not None and reg.current().version == first.version and first.source == "default"
    other = tmp_path / "other"
    shutil.copytree(tiny_reader, other)
    (other / "reader.safetensors").write_bytes((other / "reader.safetensors").read_bytes() + b"\0")
    v2 = reg.register(other, source="loop", parent=first.version, flag_ids=["f2", "f1"], info={"train": {"s": 1}})
    card = (v2.path / "README.md").read_text()
    assert "# Candor answerability reader" in card and "`f1`" in card and f"trained from: `{first.version}`" in card
    reg.promote(v2.version, expect_current=first.version)
    with pytest.raises(ConflictError):
        reg.promote(first.version, expect_current="someone-else")
    restored, replaced = reg.rollback(note="test")
    assert restored.version == first.version and replaced.version == v2.version
    assert [h["action"] for h in reg.history()] == ["register", "promote", "register", "promote", "rollback"]
    with pytest.raises(NotFoundError, match="not an answerability reader"):
        reg.register(tmp_path / "nothing")
