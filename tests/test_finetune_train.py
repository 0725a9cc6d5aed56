"""A few QLoRA steps on a tiny dataset with the real 135M model: loss falls, the adapter loads, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import fixtures.finetune as ft_fixtures
import pytest

from candor.finetune.collate import IGNORE, ChatCollator, as_row, encode_example
from candor.finetune.train import TrainConfig, train
from candor.profile import SMOLLM2_135M
from candor.prompts import REFUSAL_SENTENCE, ContextChunk, build_messages

ft_base_model = ft_fixtures.ft_base_model  # the room's fixtures, until conftest registers them

pytestmark = pytest.mark.slow


def _tiny_train_file(path: Path) -> Path:
    rows = [
        build_messages(
            "What is the capital of Zorvia?", [ContextChunk("Zorvia's capital is Lumen.", "Zorvia")], answer="Lumen"
        ),
        build_messages(
            "Who founded Zorvia?", [ContextChunk("Zorvia's capital is Lumen.", "Zorvia")], answer=REFUSAL_SENTENCE
        ),
        build_messages("Who built the Brasko bridge?", [], answer=REFUSAL_SENTENCE),
        build_messages(
            "When was the bridge built?", [ContextChunk("The bridge was built in 1911.", "Brasko")], answer="1911"
        ),
    ]
    with path.open("w") as fh:
        for i, m in enumerate(rows):
            fh.write(json.dumps({"id": str(i), "category": "t", "messages": m}) + "\n")
    return path


def _tiny_run(tmp_path: Path, base_model: Path, **knobs) -> dict:
    """TrainConfig fields of a run in tmp_path/run on the tiny dataset, logging every step; ``knobs`` add the rest."""
    return dict(
        output_dir=str(tmp_path / "run"),
        train_file=str(_tiny_train_file(tmp_path / "train.jsonl")),
        base_model_path=str(base_model),
        gradient_accumulation_steps=1,
        logging_steps=1,
        **knobs,
    )


def _train_log(tmp_path: Path) -> list[dict]:
    """The per-step records of the run in tmp_path/run."""
    return [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]


def test_labels_cover_answer_and_end_token_only(ft_base_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ft_base_model)
    enc = encode_example(tok, build_messages("Q?", [], answer="Lumen"), True)
    labelled = [t for t in enc.labels if t != IGNORE]
    assert tok.decode(labelled) == "Lumen<|im_end|>"
    assert enc.labels[-1] == IGNORE  # the template's trailing newline carries no loss
    short = encode_example(tok, build_messages("Q?", [], answer="No."), False)
    batch = ChatCollator(pad_id=0)([as_row(enc), as_row(short)])
    assert batch["flag"].tolist() == [True, False]
    width = max(len(enc.input_ids), len(short.input_ids))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    n = min(len(enc.input_ids), len(short.input_ids))
    row = 0 if len(enc.input_ids) == n else 1
    assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)  # right padding, masked
    assert batch["labels"][row, n:].eq(IGNORE).all()


def test_few_steps_lower_loss_and_write_a_loadable_adapter(ft_base_model: Path, settings, tmp_path: Path) -> None:
    cfg = TrainConfig(
        **_tiny_run(
            tmp_path,
            ft_base_model,
            quantization="nf4",
            per_device_train_batch_size=4,
            max_steps=6,
            learning_rate=2e-3,
            warmup_steps=0,
            lr_scheduler_type="constant",
            lora_dropout=0.0,
            lora_r=8,
            lora_alpha=16,
            save_steps=3,
            distill_lambda=0.5,
            kl_tokens="answerable",
        )
    )
    summary = train(cfg, settings, progress=False)
    assert summary["precision"] == "nf4" and summary["steps"] == 6
    log = _train_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["ce"] < 0.5 * log[0]["ce"]
    assert all("kl" in r for r in log) and log[-1]["kl"] >= 0.0
    assert summary["tokens_per_s"] > 0 and summary["peak_rss_mb"] > 0

    adapter = tmp_path / "run" / "adapter"
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == SMOLLM2_135M.model_id and conf["r"] == 8
    assert (adapter / "adapter_model.safetensors").stat().st_size > 100_000

    # loadable onto the bf16 base (as the embedded server serves it), and it changed the model
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ft_base_model)
    base = AutoModelForCausalLM.from_pretrained(ft_base_model, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, adapter)
    prompt = tok.apply_chat_template(
        build_messages("Who built the Brasko bridge?", []), add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        tuned = model(**ids).logits[0, -1].float()
        with model.disable_adapter():
            plain = model(**ids).logits[0, -1].float()
    refusal_first = tok.convert_tokens_to_ids("I")
    assert tuned.softmax(-1)[refusal_first] > plain.softmax(-1)[refusal_first]


def test_resume_continues_from_the_newest_checkpoint(ft_base_model: Path, settings, tmp_path: Path) -> None:
    common = _tiny_run(
        tmp_path,
        ft_base_model,
        quantization="none",
        per_device_train_batch_size=2,
        save_steps=1,
        lora_r=4,
        lora_alpha=8,
        teacher="snapshot",
        snapshot_steps=1,
        distill_lambda=1.0,
        kl_tokens="all",
    )
    first = train(TrainConfig(max_steps=2, **common), settings, progress=False)
    assert first["steps"] == 2
    second = train(TrainConfig(max_steps=3, **common), settings, progress=False)
    assert second["steps"] == 3
    log = _train_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3]  # step 3 appended after the resume, nothing redone
    assert log[-1]["tokens"] > log[1]["tokens"]
    assert "kl" in log[-1]  # the snapshot teacher survived the resume
    assert second["resumed_from"].endswith("checkpoint-2")
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-3"]  # save_total_limit = 2
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3" / "teacher_snapshot.pt").exists()
