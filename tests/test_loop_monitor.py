"""After promotion: live flag and refusal rates per adapter version, and the rollback advice."""

from __future__ import annotations

from candor.retrain.loop_params import MonitorParams
from candor.retrain.monitor import adapter_health

P = MonitorParams(min_answers=50, max_flag_rate_rise=0.05, max_refusal_rate_rise=0.2)


def _stat(version: str, answers: int, flags: int, refusals: int, correct: int = 0) -> dict:
    return {
        "adapter": "refusal",
        "adapter_version": version,
        "answers": answers,
        "refusals": refusals,
        "failures": 0,
        "flags": flags + correct,
        "flags_by_verdict": {"hallucination": flags, **({"correct": correct} if correct else {})},
    }


def test_a_rise_in_flags_recommends_rollback() -> None:
    h = adapter_health([_stat("new", 100, 12, 20), _stat("old", 200, 8, 40)], "new", "old", P)
    assert h["recommend_rollback"] and h["status"] == "rollback_recommended"
    assert "flag rate 0.120 vs 0.040" in h["reasons"][0]


def test_a_rise_in_refusals_recommends_rollback() -> None:
    h = adapter_health([_stat("new", 100, 1, 70), _stat("old", 100, 1, 30)], "new", "old", P)
    assert h["recommend_rollback"] and "refusal rate 0.700 vs 0.300" in h["reasons"][0]


def test_praise_is_not_a_complaint_and_small_changes_pass() -> None:
    h = adapter_health([_stat("new", 100, 5, 30, correct=40), _stat("old", 100, 3, 25)], "new", "old", P)
    assert h["status"] == "ok" and not h["recommend_rollback"]


def test_too_few_answers_or_no_baseline_never_recommend() -> None:
    assert adapter_health([_stat("new", 10, 9, 9)], "new", "old", P)["status"] == "too_early"
    assert adapter_health([_stat("new", 100, 90, 9)], "new", None, P)["status"] == "no_baseline"
    assert adapter_health([], None, None, P)["status"] == "no_adapter"
