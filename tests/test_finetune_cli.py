"""`candor finetune build-data` and `candor eval` end to end on a tiny set, with the real model."""

from __future__ import annotations

import json
from pathlib import Path

import fixtures.finetune as ft_fixtures
import pytest
import yaml
from fixtures.finetune import write_tiny_squad

from candor.cli.main import main

ft_base_model = ft_fixtures.ft_base_model  # the room's fixtures, until conftest registers them

pytestmark = pytest.mark.slow


def _params(tmp_path: Path, base: Path, data_src: Path, cal_dir: Path) -> Path:
    params = {
        "build_data": {
            "source": str(data_src),
            "split": "train",
            "out_dir": str(cal_dir),
            "seed": 1,
            "val_articles": 2,
            "size": 40,
            "val_size": 10,
        },
        "train": {
            "output_dir": str(tmp_path / "run"),
            "train_file": str(cal_dir / "train.jsonl"),
            "base_model_path": str(base),
            "quantization": "none",
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "lora_r": 4,
            "lora_alpha": 8,
            "max_length": 400,
            "torch_threads": 1,
        },
        "eval": {
            "mode": "oracle",
            "source": str(data_src),
            "split": "dev",
            "limit": 6,
            "seed": 1,
            "calibration_source": str(cal_dir),
            "calibration_split": "val",
            "calibration_limit": 4,
            "extra_categories": ["no_context"],
            "extra_limit": 2,
            "batch_size": 8,
            "max_new_tokens": 8,
            "bootstrap": 50,
            "probe": False,
            "base_model_path": str(base),
            "models": {"base": "base"},
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_build_train_eval_end_to_end(ft_base_model: Path, settings, tmp_path: Path, capsys) -> None:
    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=6)
    write_tiny_squad(src, "dev", n_articles=3)
    cal = tmp_path / "data"
    params = _params(tmp_path, ft_base_model, src, cal)

    assert main(["finetune", "build-data", "--params", str(params)]) == 0
    assert (cal / "train.jsonl").exists() and (cal / "val.questions.jsonl").exists()
    assert main(["finetune", "train", "--params", str(params), "--no-progress"]) == 0
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()

    out = tmp_path / "report" / "eval.json"
    code = main(
        ["eval", "--params", str(params), "-m", "base", "-m", f"tiny={adapter}", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"base", "tiny"}
    for m in res["models"].values():
        only = m["model_only"]
        assert only["n"] == 6 and only["n_answerable"] + only["n_unanswerable"] == 6
        assert 0.0 <= only["hallucination_rate"] <= 1.0 and 0.0 <= only["over_refusal"] <= 1.0
        assert only["curve"][-1]["over_refusal"] == 1.0  # the curve ends at "refuse everything"
        assert m["calibration"]["n"] == 4 and "threshold" in m
        assert m["extra_categories"]["no_context"]["n"] == 2
    preds = (out.parent / "eval-predictions" / "predictions-tiny.jsonl").read_text().splitlines()
    assert len(preds) == 8 and all("first_token_top" in json.loads(p) for p in preds)
    md = out.with_suffix(".md").read_text()
    assert "| hallucination rate |" in md and "tiny" in md
    assert "hallucination" in capsys.readouterr().out

    shipped = tmp_path / "models" / "tiny"
    code = main(
        [
            "finetune",
            "ship",
            str(tmp_path / "run"),
            "--dest",
            str(shipped),
            "--stats",
            str(cal / "stats.json"),
            "--eval",
            str(out),
            "--eval-model",
            "base",
            "--eval-model",
            "tiny",
        ]
    )
    assert code == 0
    assert (shipped / "adapter_model.safetensors").stat().st_size < 25 * 1024 * 1024
    card = (shipped / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "| hallucination rate |" in card


def test_eval_bad_input_is_a_clear_error(settings, tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("eval:\n  models: {base: base}\n")
    assert main(["eval", "--params", str(params), "-m", f"x={tmp_path / 'nope'}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no adapter_config.json" in err and "Traceback" not in err
    params.write_text("train:\n  lerning_rate: 1\n")
    assert main(["finetune", "train", "--params", str(params)]) == 2
    assert "unknown keys" in capsys.readouterr().err


def _rag_params(tmp_path: Path, ft_base_model: Path, monkeypatch, rag: dict) -> Path:
    """params.yaml for `candor eval --mode rag` over a tiny SQuAD (3 train + 2 dev articles)."""
    from candor.settings import get_settings

    monkeypatch.setenv("CANDOR_BASE_MODEL_PATH", str(ft_base_model))
    get_settings.cache_clear()
    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=3)
    write_tiny_squad(src, "dev", n_articles=2, first=3)
    params = _params(tmp_path, ft_base_model, src, tmp_path / "data")
    p = yaml.safe_load(params.read_text())
    p["eval"]["rag"] = {"collection": "tiny-eval", "top_k": 2, "concurrency": 2, **rag}
    params.write_text(yaml.safe_dump(p))
    return params


def test_eval_rag_mode_end_to_end(ft_base_model: Path, settings, tmp_path: Path, monkeypatch) -> None:
    """RAG mode: the paragraphs are ingested, each question goes through retrieval and the service's answer
    core to a real model server over HTTP, and every answer is logged and split by retrieval outcome."""
    import sqlite3

    params = _rag_params(tmp_path, ft_base_model, monkeypatch, {"also_ingest": ["train"]})

    out = tmp_path / "rag" / "eval.json"
    code = main(["eval", "--params", str(params), "--mode", "rag", "-m", "base", "--out", str(out), "--no-progress"])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["config"]["mode"] == "rag" and res["config"]["collection"] == "tiny-eval"
    assert res["config"]["ingest"]["new"] == 10  # 2 paragraphs per article, 3 train + 2 dev articles
    base = res["models"]["base"]
    n = base["model_only"]["n"]
    assert n == 6  # the params' limit, a stratified sample of the 8 dev questions
    assert sum(base["refusal_layers"].values()) == n
    assert 0.0 < base["gold_retrieval_rate"] <= 1.0  # each question names its article: retrieval finds some
    assert set(base["by_retrieval"]) <= {"gold retrieved", "gold missed"} and base["by_retrieval"]
    with sqlite3.connect(out.parent / "eval-answers.db") as db:
        logged = db.execute("SELECT count(*) FROM answers WHERE collection = 'tiny-eval'").fetchone()[0]
    assert logged == n  # every answer went through the service's answer log
    assert "end-to-end RAG" in out.with_suffix(".md").read_text()
    assert res["config"]["refusal_signal"].startswith("first token")


def test_eval_rag_mode_with_the_verifier(ft_base_model: Path, settings, tmp_path: Path, monkeypatch, tiny_verifier):
    """RAG mode with --verifier: the answer core scores the fitted passages; its threshold is the verifier's."""
    from candor.answerability import VerifierMeta

    params = _rag_params(tmp_path, ft_base_model, monkeypatch, {"thresholds": {"base": 0.5}})
    out = tmp_path / "rag" / "eval.json"
    args = ["eval", "--params", str(params), "--mode", "rag", "-m", "base", "--out", str(out), "--no-progress"]
    assert main([*args, "--verifier", str(tiny_verifier)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["refusal_signal"].startswith("verifier")
    base = res["models"]["base"]
    assert base["threshold"] == VerifierMeta.read(tiny_verifier).threshold  # not the first-token one in params
    assert "verifier" not in base["refusal_layers"]  # in evaluation the threshold is applied in the metrics
    assert base["first_token_at_threshold"]["n"] == 6  # the first-token signal, at params' threshold, beside it
    assert sum(base["refusal_layers"].values()) == base["model_only"]["n"] == 6


def test_eval_refuses_the_int8_serving_mode(ft_base_model: Path) -> None:
    """int8 is a serving mode (merged, quantized); evaluation loads adapters unmerged and says so."""
    from candor.errors import InvalidInputError
    from candor.finetune.evaluate import LocalGenerator

    with pytest.raises(InvalidInputError, match="not int8"):
        LocalGenerator(ft_base_model, dtype="int8")


def test_eval_with_the_verifier_as_the_refusal_signal(ft_base_model: Path, settings, tmp_path: Path, tiny_verifier):
    """Oracle mode with --verifier: every model's confidence is 1 - P(answerable), the served signal."""
    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=6)
    write_tiny_squad(src, "dev", n_articles=3)
    cal = tmp_path / "data"
    params = _params(tmp_path, ft_base_model, src, cal)
    assert main(["finetune", "build-data", "--params", str(params)]) == 0
    out = tmp_path / "report" / "eval.json"
    args = ["eval", "--params", str(params), "-m", "base", "--out", str(out), "--no-progress"]
    assert main([*args, "--verifier", str(tiny_verifier)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["refusal_signal"].startswith("verifier")
    lines = (out.parent / "eval-predictions" / "predictions-base.jsonl").read_text().splitlines()
    preds = [json.loads(line) for line in lines]
    assert preds and all(0.0 <= p["answerable"] <= 1.0 for p in preds)
    assert all(abs(p["confidence"] - (1.0 - p["answerable"])) < 1e-4 for p in preds)
    assert all(p["answerable"] == 0.0 for p in preds if p["category"] == "no_context")  # no passage, no answer
    assert main([*args, "--verifier", str(tmp_path / "missing")]) == 2  # a clear error, not a traceback
