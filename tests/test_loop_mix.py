"""The prepare stage: feedback pairs mixed into base data from the fine-tuning builder (real SQuAD)."""

from __future__ import annotations

import pytest
from fixtures.loop import flag_row

from candor.errors import InvalidInputError
from candor.prompts import normalize_text
from candor.retrain.loop_params import MixParams
from candor.retrain.mix import plan_sizes, prepare
from candor.retrain.pairs import build_pairs


def test_plan_sizes_keeps_the_fraction_within_bounds() -> None:
    mix = MixParams(feedback_fraction=0.2, max_repeats=4, min_base_examples=10, max_base_examples=100)
    assert plan_sizes(2, mix) == (4, 32)  # 8 feedback rows, 32 base: 20 %
    assert plan_sizes(1, mix) == (4, 16)
    assert plan_sizes(1, MixParams(0.2, 4, 64, 100)) == (4, 64)  # the floor wins over the fraction
    r, n_base = plan_sizes(20, mix)  # 20 x 4 x 4 = 320 > 100: fewer repeats first
    assert r == 1 and n_base == 80
    with pytest.raises(InvalidInputError, match="no feedback pairs"):
        plan_sizes(0, mix)


def _params(squad_dir) -> dict:
    return {"build_data": {"source": str(squad_dir), "split": "train", "seed": 13, "val_articles": 3}}


def test_prepare_mixes_real_base_data_without_the_flagged_question(squad_dir) -> None:
    import json

    first = json.loads((squad_dir / "train.questions.jsonl").open().readline())
    pairs = build_pairs(
        [flag_row("f1", question=first["question"]), flag_row("f2", correction="1889", question="When?")]
    ).pairs
    mix = MixParams(feedback_fraction=0.25, max_repeats=3, min_base_examples=8, max_base_examples=50)
    rows, stats = prepare(_params(squad_dir), pairs, mix)
    assert (stats["pairs"], stats["repeats"], stats["feedback_rows"], stats["base_rows"]) == (2, 3, 6, 18)
    assert stats["feedback_fraction"] == 0.25 and len(rows) == 24
    feedback = [r for r in rows if r["source"] == "feedback"]
    base = [r for r in rows if r["source"] == "base"]
    assert len({r["id"] for r in feedback}) == 6 and all(r["messages"][-1]["role"] == "assistant" for r in base)
    assert normalize_text(first["question"]) not in {normalize_text(r["question"]) for r in base}
    assert set(stats["base_categories"]) <= {
        "answerable",
        "unanswerable",
        "retrieval_miss",
        "no_context",
        "false_premise",
    }
    again, _ = prepare(_params(squad_dir), pairs, mix)
    assert [r["id"] for r in again] == [r["id"] for r in rows]  # deterministic
