"""The promotion gate over synthetic metrics files, and the promote stage that acts on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.loop import flag_row, frozen, metrics, write_adapter

from candor.errors import InvalidInputError
from candor.retrain.adapters import AdapterRegistry
from candor.retrain.gate import decide
from candor.retrain.loop_params import GateParams

GATE = GateParams(max_hallucination_rise=0.02, max_over_refusal_rise=0.03, max_f1_drop=0.03, max_refused_rate=0.9)
NOW = frozen(h=0.30, o=0.10, f1=0.55)


def _decide_file(tmp_path: Path, m: dict) -> dict:
    """Through a real file, as the promote stage reads it."""
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(m))
    return decide(json.loads(path.read_text()), GATE)


def _failed(decision: dict) -> set[str]:
    return {c["name"] for c in decision["checks"] if not c["ok"]}


def test_a_better_adapter_is_promoted(tmp_path) -> None:
    d = _decide_file(tmp_path, metrics(NOW, frozen(h=0.22, o=0.11, f1=0.56), 0, 3))
    assert d["promote"] and d["verdict"] == "promote" and _failed(d) == set()
    assert d["reasons"][0].startswith("every check passed")


def test_more_hallucination_is_rejected(tmp_path) -> None:
    d = _decide_file(tmp_path, metrics(NOW, frozen(h=0.35, o=0.10, f1=0.55), 0, 3))
    assert not d["promote"] and _failed(d) == {"hallucination_rate"}
    assert "hallucination rate 0.350 vs 0.300" in d["reasons"][0]


def test_more_over_refusal_or_less_f1_is_rejected(tmp_path) -> None:
    assert _failed(_decide_file(tmp_path, metrics(NOW, frozen(0.3, 0.2, 0.55), 0, 3))) == {"over_refusal"}
    assert _failed(_decide_file(tmp_path, metrics(NOW, frozen(0.3, 0.1, 0.45), 0, 3))) == {"answer_f1"}


def test_changes_within_the_margins_pass(tmp_path) -> None:
    d = _decide_file(tmp_path, metrics(NOW, frozen(h=0.315, o=0.125, f1=0.53), 1, 2))
    assert d["promote"]


def test_an_adapter_that_refuses_everything_is_rejected(tmp_path) -> None:
    d = _decide_file(tmp_path, metrics(NOW, frozen(h=0.0, o=1.0, f1=0.0, refused=1.0), 0, 3))
    assert not d["promote"]
    assert {"not_refusing_everything", "over_refusal", "answer_f1"} <= _failed(d)
    # even against a current adapter that already refuses everything
    same = frozen(h=0.0, o=1.0, f1=0.0, refused=1.0)
    assert "not_refusing_everything" in _failed(_decide_file(tmp_path, metrics(same, same, 0, 3)))


def test_the_regression_set_must_improve(tmp_path) -> None:
    better = frozen(h=0.25, o=0.10, f1=0.56)
    assert _failed(_decide_file(tmp_path, metrics(NOW, better, 1, 1))) == {"regression_improves"}
    assert _decide_file(tmp_path, metrics(NOW, better, 3, 3))["promote"]  # nothing left to gain
    assert _failed(_decide_file(tmp_path, metrics(NOW, better, 0, 0, n_reg=0))) == {"regression_improves"}


def test_a_metrics_file_without_the_numbers_is_an_error(tmp_path) -> None:
    m = metrics(NOW, frozen(0.2, 0.1, 0.6), 0, 3)
    del m["frozen"]["candidate"]["over_refusal"]
    with pytest.raises(InvalidInputError, match="frozen.candidate.over_refusal"):
        _decide_file(tmp_path, m)


# --- the promote stage: the decision file, and the registry only on a pass --------------------


def _stage_files(work: Path, m: dict, baseline: dict) -> Path:
    (work / "inputs").mkdir(parents=True)
    (work / "metrics.json").write_text(json.dumps(m))
    (work / "inputs" / "baseline.json").write_text(json.dumps(baseline))
    (work / "inputs" / "flags.jsonl").write_text(json.dumps(flag_row("f1")) + "\n")
    (work / "pairs_stats.json").write_text(json.dumps({"flag_ids": ["f1"], "pairs": 1}))
    (work / "mix_stats.json").write_text(json.dumps({"rows": 32}))
    write_adapter(work / "train" / "adapter", b"candidate")
    (work / "train" / "train_summary.json").write_text(json.dumps({"steps": 16}))
    return work


def _params(work: Path) -> dict:
    return {"loop": {"workdir": str(work), "gate": GATE.__dict__}}


def test_promote_stage_rejects_without_touching_the_registry(settings, tmp_path) -> None:
    from candor.retrain.loop_stages import promote

    work = _stage_files(tmp_path / "loop", metrics(NOW, frozen(0.4, 0.1, 0.55), 0, 3), {"version": None})
    d = promote(_params(work), settings)
    assert d["verdict"] == "reject" and not d["promoted"]
    assert json.loads((work / "decision.json").read_text())["reasons"] == d["reasons"]
    assert AdapterRegistry.for_settings(settings).list() == []


def test_promote_stage_registers_and_promotes_with_lineage(settings, tmp_path) -> None:
    from candor.retrain.loop_stages import promote

    reg = AdapterRegistry.for_settings(settings)
    old = reg.promote(reg.register(write_adapter(tmp_path / "old", b"old")).version)
    baseline = {"version": old.version, "path": str(old.path)}
    work = _stage_files(tmp_path / "loop", metrics(NOW, frozen(0.2, 0.1, 0.56), 0, 3), baseline)
    d = promote(_params(work), settings)
    assert d["promoted"] and reg.current().version == d["candidate_version"]
    assert reg.previous().version == old.version
    card = (reg.current().path / "README.md").read_text()
    assert "`f1`" in card and f"trained from: `{old.version}`" in card
    # DVC reruns the stage (always_changed): the same decision changes nothing ...
    again = promote(_params(work), settings)
    assert again["promoted"] and reg.current().version == d["candidate_version"] and len(reg.history()) == 4
    # ... and a version someone rolled back is never re-promoted by a rerun
    reg.rollback(note="users flag it more")
    after_rollback = promote(_params(work), settings)
    assert not after_rollback["promoted"] and "rolled back" in after_rollback["reasons"][0]
    assert reg.current().version == old.version


def test_promote_stage_refuses_a_stale_baseline(settings, tmp_path) -> None:
    from candor.retrain.loop_stages import promote

    reg = AdapterRegistry.for_settings(settings)
    a = reg.register(write_adapter(tmp_path / "a", b"a"))
    b = reg.register(write_adapter(tmp_path / "b", b"b"))
    reg.promote(b.version)  # someone promoted b after the export judged against a
    work = _stage_files(tmp_path / "loop", metrics(NOW, frozen(0.2, 0.1, 0.56), 0, 3), {"version": a.version})
    d = promote(_params(work), settings)
    assert not d["promoted"] and "changed meanwhile" in d["reasons"][0]
    assert reg.current().version == b.version
