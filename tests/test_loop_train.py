"""The loop's loss: base rows distil to the starting adapter, feedback rows carry the change."""

from __future__ import annotations

import pytest
from fixtures.core import tiny_peft_llama

from candor.finetune.train import TrainConfig


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
    return ids, torch.ones_like(ids), labels, torch.tensor(base_rows)


def test_full_base_weight_is_the_fine_tuning_loss(tiny_peft) -> None:
    from candor.finetune.train import compute_loss
    from candor.retrain.loop_train import loop_loss

    cfg = TrainConfig(distill_lambda=1.0, kl_tokens="answerable", first_token_weight=2.0)
    batch = _batch([True, False])
    ours, parts = loop_loss(tiny_peft, batch, cfg, tiny_peft.disable_adapter, base_ce_weight=1.0)
    theirs, _ = compute_loss(tiny_peft, batch, cfg, tiny_peft.disable_adapter)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5) and parts["kl"] > 0


def test_zero_base_weight_leaves_base_rows_only_the_kl(tiny_peft) -> None:
    from candor.retrain.loop_train import loop_loss

    cfg = TrainConfig(distill_lambda=1.0, kl_tokens="answerable")
    only_base, parts = loop_loss(tiny_peft, _batch([True, True]), cfg, tiny_peft.disable_adapter, 0.0)
    assert parts["ce"] == 0.0 and parts["kl"] > 0 and float(only_base) == pytest.approx(parts["kl"], rel=1e-5)
    only_feedback, parts = loop_loss(tiny_peft, _batch([False]), cfg, tiny_peft.disable_adapter, 0.0)
    assert parts["ce"] > 0 and "kl" not in parts
