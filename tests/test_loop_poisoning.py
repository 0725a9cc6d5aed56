"""Poisoning defences: only approved flags, per-key caps, duplicates, contradictions."""

from __future__ import annotations

import json

import pytest
from fixtures.loop import flag_row

from candor.errors import InvalidInputError
from candor.retrain.loop_params import PoisoningParams
from candor.retrain.poisoning import NO_KEY, read_flags, screen_flags


def _ids(rows) -> list[str]:
    return [r["flag_id"] for r in rows]


def _reasons(screened) -> dict[str, str]:
    return {d["flag_id"]: d["reason"] for d in screened.dropped}


def test_only_approved_flags_pass() -> None:
    rows = [
        flag_row("f1", review_status="approved"),
        flag_row("f2", review_status="pending", question="Q2?"),
        flag_row("f3", review_status="rejected", question="Q3?"),
    ]
    s = screen_flags(rows, PoisoningParams())
    assert _ids(s.kept) == ["f1"]
    assert _reasons(s) == {"f2": "not_approved", "f3": "not_approved"}


def test_per_key_cap_keeps_the_oldest_and_other_keys_are_unaffected() -> None:
    rows = [flag_row(f"a{i}", question=f"Question {i}?", api_key_id="attacker") for i in range(5)]
    rows += [flag_row("b1", question="Another?", api_key_id="honest")]
    s = screen_flags(rows, PoisoningParams(max_flags_per_key=2))
    assert _ids(s.kept) == ["a0", "a1", "b1"]
    assert {k for k, v in _reasons(s).items() if v == "over_key_cap"} == {"a2", "a3", "a4"}
    assert s.per_key["attacker"] == {"seen": 5, "kept": 2}


def test_keyless_flags_share_one_slot() -> None:
    rows = [flag_row(f"n{i}", question=f"Q{i}?", api_key_id=None) for i in range(3)]
    s = screen_flags(rows, PoisoningParams(max_flags_per_key=1))
    assert _ids(s.kept) == ["n0"] and s.per_key[NO_KEY]["seen"] == 3


def test_same_prompt_same_target_counts_once_across_keys() -> None:
    rows = [
        flag_row("f1", api_key_id="k1"),
        flag_row("f2", api_key_id="k2", question=" when WAS the Eiffel tower completed "),  # same after normalising
        flag_row("f3", api_key_id="k3", correction="It was completed in 1925."),  # unsupported → also "refuse"
    ]
    s = screen_flags(rows, PoisoningParams())
    assert _ids(s.kept) == ["f1"]
    assert _reasons(s) == {"f2": "duplicate", "f3": "duplicate"}


def test_contradicting_flags_on_one_prompt_train_nothing() -> None:
    rows = [
        flag_row("f1", "correct", api_key_id="k1"),  # keep the given answer
        flag_row("f2", "hallucination", api_key_id="k2"),  # refuse
        flag_row("f3", "hallucination", question="Who designed it?", api_key_id="k2"),
    ]
    s = screen_flags(rows, PoisoningParams())
    assert _ids(s.kept) == ["f3"]
    assert s.conflicts == [["f1", "f2"]]
    assert _reasons(s) == {"f1": "conflict", "f2": "conflict"}
    kept_when_allowed = screen_flags(rows, PoisoningParams(drop_conflicts=False))
    assert _ids(kept_when_allowed.kept) == ["f1", "f2", "f3"]


def test_two_different_supported_corrections_conflict() -> None:
    rows = [
        flag_row("f1", correction="1889", api_key_id="k1"),
        flag_row("f2", correction="Gustave Eiffel", api_key_id="k2"),
    ]
    assert screen_flags(rows, PoisoningParams()).conflicts == [["f1", "f2"]]


def test_screening_is_deterministic_and_reports_everything() -> None:
    rows = [flag_row(f"f{i}", question=f"Q{i % 3}?", api_key_id=f"k{i % 2}") for i in range(8)]
    a = screen_flags(rows, PoisoningParams(max_flags_per_key=3)).report()
    b = screen_flags(list(reversed(rows)), PoisoningParams(max_flags_per_key=3)).report()
    assert a == b
    assert a["input"] == 8 and a["kept"] + len(a["dropped"]) == 8


def test_read_flags_rejects_a_file_that_is_not_an_export(tmp_path) -> None:
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps(flag_row()) + "\n\n")
    assert len(read_flags(good)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(InvalidInputError, match="missing"):
        read_flags(bad)
    weird = tmp_path / "weird.jsonl"
    weird.write_text(json.dumps(flag_row(verdict="spam")) + "\n")
    with pytest.raises(InvalidInputError, match="unknown verdict"):
        read_flags(weird)
