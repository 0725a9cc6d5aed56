"""The loop's loss: base rows distil to the starting adapter, feedback rows carry the change."""

from __future__ import annotations

import fixtures.finetune as ft_fixtures
import pytest
from fixtures.core import tiny_peft_llama

from candor.finetune.train import TrainConfig

ft_base_model = ft_fixtures.ft_base_model


@pytest.fixture(scope="module")
def tiny_peft():
    """A 2-layer random Llama with a LoRA whose B is non-zero (adapter on != adapter off)."""
    from candor.settings import apply_thread_settings

    apply_thread_settings(1)
    import torch

    model = tiny_peft_llama(32, 2, 4, r=4, target_modules=["q_proj", "v_proj"], max_position_embeddings=64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def _batch(base_rows: list[bool]):
    import torch

    ids = torch.arange(2, 12).repeat(len(base_rows), 1)
    labels = torch.full_like(ids, -100)
    labels[:, 6:] = ids[:, 6:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "flag": torch.tensor(base_rows)}


def test_full_base_weight_is_the_fine_tuning_loss(tiny_peft) -> None:
    from candor.finetune.distill import distillation_loss
    from candor.finetune.train import loss_spec
    from candor.retrain.loop_train import loop_loss_spec

    cfg = TrainConfig(distill_lambda=1.0, kl_tokens="answerable", first_token_weight=2.0)
    batch = _batch([True, False])
    assert loop_loss_spec(cfg, anchor=True, base_ce_weight=1.0) == loss_spec(cfg)
    ours, parts = distillation_loss(tiny_peft, batch, loop_loss_spec(cfg, True, 1.0), tiny_peft.disable_adapter)
    assert parts["kl"] > 0 and float(ours) == pytest.approx(parts["ce"] + parts["kl"], rel=1e-5)


def test_zero_base_weight_leaves_base_rows_only_the_kl(tiny_peft) -> None:
    from candor.finetune.distill import distillation_loss
    from candor.retrain.loop_train import loop_loss_spec

    cfg = TrainConfig(distill_lambda=1.0, kl_tokens="answerable")
    spec = loop_loss_spec(cfg, anchor=True, base_ce_weight=0.0)
    only_base, parts = distillation_loss(tiny_peft, _batch([True, True]), spec, tiny_peft.disable_adapter)
    assert parts["ce"] == 0.0 and parts["kl"] > 0 and float(only_base) == pytest.approx(parts["kl"], rel=1e-5)
    only_feedback, parts = distillation_loss(tiny_peft, _batch([False]), spec, tiny_peft.disable_adapter)
    assert parts["ce"] > 0 and parts["kl"] == 0.0 and float(only_feedback) == pytest.approx(parts["ce"], rel=1e-5)


def test_answer_token_index_restarts_on_each_row() -> None:
    import torch

    from candor.finetune.distill import answer_token_index

    first = torch.tensor([True, False, False, True, False, True])
    assert answer_token_index(first).tolist() == [0, 1, 2, 0, 1, 0]


def test_kl_skip_first_leaves_the_opening_tokens_out_of_the_kl(tiny_peft) -> None:
    """The KL over tokens 1.. of each answer equals the mean of the per-token KLs there, not over all."""
    import torch

    from candor.finetune.distill import LossSpec, distillation_loss, head_logits, token_kl

    batch = _batch([True, True])
    full = LossSpec(distill_lambda=1.0)
    skip = LossSpec(distill_lambda=1.0, kl_skip_first=1)
    _, p_full = distillation_loss(tiny_peft, batch, full, tiny_peft.disable_adapter)
    _, p_skip = distillation_loss(tiny_peft, batch, skip, tiny_peft.disable_adapter)
    target = batch["labels"][:, 1:]
    pos = (target != -100).nonzero()
    with torch.no_grad():
        s = head_logits(tiny_peft, batch["input_ids"], batch["attention_mask"], pos)
        with tiny_peft.disable_adapter():
            t = head_logits(tiny_peft, batch["input_ids"], batch["attention_mask"], pos)
    per = token_kl(s, t, full.tau)
    later = pos[:, 1] > pos[:, 1].min()  # every row's answer starts at the same position here
    assert p_full["kl"] == pytest.approx(float(per.mean()), rel=1e-4)
    assert p_skip["kl"] == pytest.approx(float(per[later].mean()), rel=1e-4)
    assert p_skip["kl"] != pytest.approx(p_full["kl"], rel=1e-3)
    with pytest.raises(ValueError):
        LossSpec(kl_skip_first=-1)


def test_train_config_carries_kl_skip_first_into_the_loss() -> None:
    from candor.errors import InvalidInputError
    from candor.finetune.train import loss_spec

    assert loss_spec(TrainConfig(distill_lambda=1.0, kl_skip_first=2)).kl_skip_first == 2
    with pytest.raises(InvalidInputError):
        TrainConfig(kl_skip_first=-1)


@pytest.mark.slow
def test_the_loop_stage_trains_through_the_trainer(ft_base_model, tmp_path, settings) -> None:
    """``train_from`` on the real base: a fresh LoRA, base rows anchored, no checkpoints; its summary keys."""
    import csv
    import json

    from candor.prompts import REFUSAL_SENTENCE, ContextChunk, build_messages
    from candor.retrain.loop_train import train_from

    base = ft_base_model
    ctx = [ContextChunk("Zorvia's capital is Lumen.", "Zorvia")]
    rows = [
        ("base", build_messages("What is the capital of Zorvia?", ctx, answer="Lumen")),
        ("feedback_refusal", build_messages("Who founded Zorvia?", ctx, answer=REFUSAL_SENTENCE)),
        ("base", build_messages("Who built the bridge?", [], answer=REFUSAL_SENTENCE)),
        ("feedback_qa", build_messages("Capital of Zorvia?", ctx, answer="Lumen")),
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"category": c, "messages": m}) + "\n" for c, m in rows))
    out = tmp_path / "train"
    cfg = TrainConfig(
        output_dir=str(out), train_file=str(data), base_model_path=str(base), quantization="none",
        per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=3, lora_r=4, lora_alpha=8,
        lora_layers=2, distill_lambda=1.0, teacher="snapshot", logging_steps=5,
    )  # fmt: skip
    summary = train_from(cfg, None, settings, progress=False, anchor=True, base_ce_weight=0.5)
    assert summary["steps"] == 3 and summary["kl_on"] == "base rows" and summary["base_ce_weight"] == 0.5
    assert summary["tokens"] > 0 and summary["tokens_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["first_loss"] > 0 and summary["last_loss"] > 0
    with (out / "loss.csv").open() as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2", "3"]  # every step, whatever logging_steps
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints").exists()  # a loop run keeps no checkpoints
    assert json.loads((out / "train_summary.json").read_text()) == summary
