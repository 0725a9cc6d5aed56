"""Metrics against hand-computed examples, and the served refusal confidence."""

from __future__ import annotations

import json
import math

import pytest

from candor.finetune.metrics import (
    Scored,
    auroc,
    choose_threshold,
    curve_area,
    decision_metrics,
    exact_match,
    squad_normalize,
    summarize,
    token_f1,
    tradeoff_curve,
)
from candor.finetune.report import write_report
from candor.refusal_score import refusal_confidence, refusal_token_probability


def test_squad_scoring() -> None:
    assert squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Lumen", ["Lumen", "x"]) == 1.0
    assert exact_match("Lumen city", ["Lumen"]) == 0.0
    # pred "lumen city" vs gold "lumen": precision 1/2, recall 1 -> F1 2/3
    assert token_f1("Lumen city", ["Lumen"]) == pytest.approx(2 / 3)
    assert token_f1("Lumen city", ["Paris", "city of Lumen"]) == pytest.approx(0.8)  # 2/2 vs 2/3
    assert token_f1("nothing", ["Lumen"]) == 0.0


def _items() -> list[Scored]:
    # 3 answerable (one refused by its text), 3 unanswerable (one answered)
    return [
        Scored(False, False, 0.10, em=1.0, f1=1.0, category="answerable"),
        Scored(False, False, 0.60, em=0.0, f1=0.5, category="answerable"),
        Scored(False, True, 0.90, category="answerable"),
        Scored(True, True, 0.95, category="unanswerable"),
        Scored(True, True, 0.80, category="unanswerable"),
        Scored(True, False, 0.30, category="unanswerable"),
    ]


def test_decision_metrics_hand_computed() -> None:
    m = decision_metrics(_items())
    assert m["em"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1.5 / 3)
    assert m["answered_f1"] == pytest.approx(0.75)  # answered answerables: 1.0 and 0.5
    assert m["hallucination_rate"] == pytest.approx(1 / 3)
    assert m["over_refusal"] == pytest.approx(1 / 3)
    # refusals: 3 made, 2 right -> precision 2/3; 2 of 3 unanswerables refused -> recall 2/3
    assert m["refusal_precision"] == pytest.approx(2 / 3)
    assert m["refusal_recall"] == pytest.approx(2 / 3)
    # answer decision: 3 answered, 2 right; 2 of 3 answerables answered -> F1 2/3; F1_RG = mean
    assert m["f1_rg"] == pytest.approx(2 / 3)
    # a threshold of 0.5 also refuses the 0.60 answerable: over-refusal 2/3, answered-F1 1.0
    t = decision_metrics(_items(), 0.5)
    assert t["over_refusal"] == pytest.approx(2 / 3) and t["answered_f1"] == pytest.approx(1.0)
    assert t["hallucination_rate"] == pytest.approx(1 / 3)
    t2 = decision_metrics(_items(), 0.25)
    assert t2["hallucination_rate"] == 0.0


def test_auroc_and_curve() -> None:
    items = _items()
    # positives (unanswerable) 0.95, 0.80, 0.30; negatives 0.10, 0.60, 0.90
    # pairs won: 0.95 beats 3, 0.80 beats 2, 0.30 beats 1 -> 6 of 9
    assert auroc(items) == pytest.approx(6 / 9)
    tied = [Scored(True, False, 0.5), Scored(False, False, 0.5)]
    assert auroc(tied) == pytest.approx(0.5)
    curve = tradeoff_curve(items)
    assert curve[0]["threshold"] is None
    assert curve[-1]["over_refusal"] == 1.0 and curve[-1]["hallucination_rate"] == 0.0
    perfect = [Scored(True, False, 0.9), Scored(False, False, 0.1)]
    assert curve_area(tradeoff_curve(perfect)) == pytest.approx(0.0)
    never = [Scored(True, False, 0.1), Scored(False, False, 0.9)]
    assert curve_area(tradeoff_curve(never)) == pytest.approx(1.0)


def test_choose_threshold_and_summary() -> None:
    items = _items()
    t, m = choose_threshold(items, "minimax")
    # 0.30 refuses every unanswerable but also two answerables; None keeps 1/3 vs 1/3: minimax picks it
    assert t is None and max(m["hallucination_rate"], m["over_refusal"]) == pytest.approx(1 / 3)
    s = summarize(items, 0.5, n_boot=200, seed=1)
    assert s["threshold"] == 0.5
    lo, hi = s["ci95"]["over_refusal"]
    assert 0.0 <= lo <= s["over_refusal"] <= hi <= 1.0
    assert set(s["per_category"]) == {"answerable", "unanswerable"}
    assert s["per_category"]["unanswerable"]["refused_rate"] == pytest.approx(2 / 3)


def test_report_json_is_strict_without_resamples_or_answers(tmp_path) -> None:
    # only unanswerable questions: the AUROC is undefined (NaN in memory); n_boot=0 gives no interval
    s = summarize([Scored(True, True, 0.9), Scored(True, False, 0.2)], None, n_boot=0)
    assert s["ci95"] == {} and math.isnan(s["auroc"])
    out = tmp_path / "r.json"
    write_report({"config": {}, "models": {"m": {"model_only": s}}}, out, tmp_path / "r.md")
    text = out.read_text()
    assert "NaN" not in text
    assert json.loads(text)["models"]["m"]["model_only"]["auroc"] is None
    assert "| refusal-confidence AUROC | nan |" in (tmp_path / "r.md").read_text()


def test_refusal_confidence_from_protocol_alternatives() -> None:
    top = [("I", math.log(0.6)), ("The", math.log(0.3)), (" I", math.log(0.05)), ("In", math.log(0.01))]
    assert refusal_token_probability(top) == pytest.approx(0.65)
    assert refusal_confidence(top) == pytest.approx(0.65)
    assert refusal_confidence(None) is None
    # a weak best retrieval match raises the confidence; a strong one leaves it
    assert refusal_confidence(top, [0.9, 0.2]) == pytest.approx(0.65)
    assert refusal_confidence(top, [0.1]) == pytest.approx(1.0)
    assert 0.65 < refusal_confidence(top, [0.25]) < 1.0


def test_refusal_confidence_from_the_verifier_replaces_the_first_token() -> None:
    top = [("I", math.log(0.6)), ("The", math.log(0.3))]
    assert refusal_confidence(top, None, answerable_probability=0.9) == pytest.approx(0.1)
    assert refusal_confidence(None, None, answerable_probability=0.25) == pytest.approx(0.75)  # before generation
    assert refusal_confidence(None, [0.1], answerable_probability=0.9) == pytest.approx(1.0)  # weak retrieval counts
    assert refusal_confidence(None, None, answerable_probability=1.7) == pytest.approx(0.0)  # clipped


# --- the general-knowledge probe --------------------------------------------------------------


def test_the_probe_counts_a_word_or_number_only_on_its_own() -> None:
    from candor.finetune.probe import PROBES, says, score_probe

    assert says("There are 7 continents.", "7") and says("A week has seven days", "seven")
    assert says("The freezing point is 0.", "0") and says("(CO2)", "co2") and says("H2O.", "h2o")
    assert not says("The freezing point of water in Celsius is -18.00 Celsius", "0")
    assert not says("It has 17 of them", "7") and not says("The answer is 14.", "4")
    assert not says("Sunday", "sun") and not says("about 3.7 days", "7")
    assert says("It is 4.0.", "4") and says("7, of course", "7") and not says("4.5", "4") and not says("7th", "7")
    answers = ["Paris"] * len(PROBES)
    answers[11] = "The freezing point of water in Celsius is -18.00 Celsius"  # once counted as 0 degrees
    scored = score_probe(answers)
    assert scored["correct"] == 1 and scored["answers"][0]["correct"] and not scored["answers"][11]["correct"]
