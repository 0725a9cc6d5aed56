"""The evaluate stage's scoring of the regression set, and the train stage's guard on long pairs."""

from __future__ import annotations

import json

import pytest

from candor.errors import InvalidInputError
from candor.retrain.loop_eval import regression_passes


@pytest.mark.parametrize(
    ("expect", "reference", "text", "refused", "passes"),
    [
        ("refuse", None, "I don't know based on the provided documents.", True, True),
        ("refuse", None, "It was completed in 1925.", False, False),
        ("answer", "1889", "It was completed in 1889.", False, True),  # the reference inside the answer
        ("answer", "It was completed in 1889 for the fair", "1889", False, True),  # the answer inside the reference
        ("answer", "Gustave Eiffel", "Eiffel", False, True),  # token F1 0.67
        ("answer", "1889", "1925", False, False),
        ("answer", "1889", "I don't know based on the provided documents.", True, False),
        ("answer", None, "Anything at all", False, True),  # wrong_refusal without a correction: any answer
    ],
)
def test_regression_passes(expect, reference, text, refused, passes) -> None:
    item = {"expect": expect, "reference": reference}
    assert regression_passes(item, text, refused, 0.5) is passes


def test_a_feedback_pair_the_trainer_would_drop_is_an_error(tmp_path) -> None:
    from candor.finetune.collate import Encoded
    from candor.retrain.loop_train import _check_feedback_kept

    rows = [{"category": "feedback_refusal"}, {"category": "answerable"}, {"category": "feedback_qa"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = [Encoded([1], [1], False, "feedback_refusal"), Encoded([1], [1], True, "feedback_qa")]
    _check_feedback_kept(path, kept, 640)  # the base row may be dropped
    with pytest.raises(InvalidInputError, match="max_length=640"):
        _check_feedback_kept(path, kept[:1], 640)


def test_the_kl_anchor_covers_base_rows_and_frees_feedback_rows() -> None:
    from candor.finetune.collate import Encoded
    from candor.retrain.loop_train import anchor_base_rows

    rows = [
        Encoded([1], [1], False, "unanswerable"),  # a base refusal: held near today's adapter
        Encoded([1], [1], True, "answerable"),
        Encoded([1], [1], False, "feedback_refusal"),  # what the flags ask: free to move
        Encoded([1], [1], True, "feedback_qa"),
    ]
    anchor_base_rows(rows)
    assert [r.answerable for r in rows] == [True, True, False, False]


def test_a_marginal_refusal_does_not_count_as_fixed() -> None:
    item = {"expect": "refuse", "reference": None}
    text = "I don't know based on the provided documents."
    assert not regression_passes(item, text, True, 0.5, confidence=0.17, min_confidence=0.5)
    assert regression_passes(item, text, True, 0.5, confidence=0.8, min_confidence=0.5)
