"""Flags → training pairs and the regression set: every verdict, corrections supported or not."""

from __future__ import annotations

import pytest
from fixtures.loop import CONTEXT, flag_row

from candor.prompts import REFUSAL_SENTENCE, ContextChunk, build_messages
from candor.retrain.pairs import QA_PAIR, REFUSAL_PAIR, build_pairs, flag_target
from candor.retrain.support import correction_support


# --- "supported by the context" -----------------------------------------------------------
@pytest.mark.parametrize(
    ("correction", "supported", "how"),
    [
        ("1889", True, "substring"),
        ("Gustave Eiffel", True, "substring"),
        ("The tower was completed in 1889, for the World's Fair.", True, "words"),
        ("It was completed in 1925.", False, "numbers_missing"),
        ("It was designed by Thomas Edison.", False, "too_few_words"),
        ("   ", False, "empty"),
    ],
)
def test_correction_support(correction: str, supported: bool, how: str) -> None:
    s = correction_support(correction, [CONTEXT], 0.8)
    assert (s.supported, s.how) == (supported, how)


def test_support_needs_a_context() -> None:
    assert not correction_support("1889", [], 0.8).supported


def test_support_ignores_case_and_punctuation() -> None:
    assert correction_support("GUSTAVE-EIFFEL!", [CONTEXT]).supported


# --- one rule per verdict ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("verdict", "correction", "refused", "pair", "expect", "reference"),
    [
        ("hallucination", None, False, REFUSAL_PAIR, "refuse", None),
        ("hallucination", "1889", False, QA_PAIR, "answer", "1889"),
        ("hallucination", "It was completed in 1925.", False, REFUSAL_PAIR, "refuse", None),
        ("hallucination", REFUSAL_SENTENCE, False, REFUSAL_PAIR, "refuse", None),
        ("should_have_refused", None, False, REFUSAL_PAIR, "refuse", None),
        ("should_have_refused", "1889", False, REFUSAL_PAIR, "refuse", None),
        ("wrong_refusal", "in 1889", True, QA_PAIR, "answer", "in 1889"),
        ("wrong_refusal", "in 1925", True, None, "refuse", None),
        ("wrong_refusal", None, True, None, "answer", None),
        ("correct", None, False, None, "answer", "It was completed in 1925."),
        ("correct", None, True, None, "refuse", None),
    ],
)
def test_flag_target(verdict, correction, refused, pair, expect, reference) -> None:
    t = flag_target(flag_row(verdict=verdict, correction=correction, refused=refused), 0.8)
    assert (t.pair, t.expect, t.reference) == (pair, expect, reference)


def test_pairs_rebuild_the_exact_prompt_with_history() -> None:
    history = [
        {"role": "user", "content": "Tell me about the tower."},
        {"role": "assistant", "content": "It is in Paris."},
    ]
    rows = [
        flag_row("f1", "hallucination", history=history),
        flag_row("f2", "hallucination", correction="1889", question="When was it finished?"),
    ]
    result = build_pairs(rows)
    refusal, qa = result.pairs
    served = build_messages(rows[0]["question"], [ContextChunk(CONTEXT, "Eiffel Tower")], history)
    assert refusal["messages"][:-1] == served
    assert refusal["messages"][-1] == {"role": "assistant", "content": REFUSAL_SENTENCE}
    assert refusal["category"] == REFUSAL_PAIR and refusal["answer"] == REFUSAL_SENTENCE
    assert qa["messages"][-1] == {"role": "assistant", "content": "1889"}
    assert qa["category"] == QA_PAIR and qa["gold_in_context"] is True
    assert (
        "(Eiffel Tower)" in qa["messages"][-2]["content"] and "When was it finished?" in qa["messages"][-2]["content"]
    )


def test_regression_set_holds_every_flag_and_stats_count_them() -> None:
    rows = [
        flag_row("f1", "hallucination"),
        flag_row("f2", "wrong_refusal", refused=True, question="Who designed it?"),
        flag_row("f3", "correct", question="Where is it?", answer="Paris"),
        flag_row("f4", "hallucination", correction="1925", question="What year?"),
    ]
    result = build_pairs(rows)
    assert [r["flag_id"] for r in result.regression] == ["f1", "f2", "f3", "f4"]
    assert [r["expect"] for r in result.regression] == ["refuse", "answer", "answer", "refuse"]
    assert [r["trained"] for r in result.regression] == [True, False, False, True]
    s = result.stats
    assert (s["pairs"], s["refusal_pairs"], s["qa_pairs"], s["regression_items"]) == (2, 2, 0, 4)
    assert s["flag_ids"] == ["f1", "f4"]
    assert s["by_reason"]["hallucination_unsupported_correction"] == 1
    assert s["correction_support"] == {"numbers_missing": 1}


def test_a_flag_without_context_becomes_a_no_context_refusal() -> None:
    result = build_pairs([flag_row("f1", "hallucination", contexts=[])])
    assert "(no passages)" in result.pairs[0]["messages"][-2]["content"]


def test_old_prompt_versions_are_counted() -> None:
    result = build_pairs([flag_row("f1", prompt_version="candor-v0")])
    assert result.stats["rebuilt_from_other_prompt_version"] == 1
