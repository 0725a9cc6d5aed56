"""The ``train`` stage: continue training the serving adapter on the mixed set.

Why warm start: a retraining run has minutes, not the hour the first adapter
got, and the gate compares the result with what serves now. Starting from the
current adapter's weights (``PeftModel.from_pretrained(..., is_trainable=True)``)
keeps everything it learned and spends the run on the flagged prompts; a fresh
LoRA (no adapter promoted yet) is the fallback. The loss, the model loading
and batching are the fine-tuning room's own (``candor.finetune.train``,
``candor.finetune.collate``): CE on answer tokens plus λ·KL to a teacher. The
teacher here is the adapter we start from (``teacher: snapshot``: a frozen
copy taken at step 0), and with ``loop.anchor_base_rows`` the KL covers every
base row and no feedback row: today's behaviour is held everywhere except
where the pairs pull (``anchor_base_rows`` below).

It trains through the one training loop (``candor.finetune.train.fit``: ``transformers.Trainer`` with
the recipe's loss). A loop run is short, so there are no checkpoints: a failed run is rerun by
``dvc repro``. It writes ``adapter/``, ``train_log.jsonl``, ``loss.csv`` (the
plot) and ``train_summary.json`` into ``output_dir``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune import train as ft
from candor.profile import resolve_model_dtype
from candor.settings import apply_thread_settings

log = logging.getLogger("candor.retrain.loop_train")


FEEDBACK_CATEGORIES = ("feedback_refusal", "feedback_qa")


def _check_feedback_kept(train_file: Path, examples: list[Any], max_length: int) -> None:
    """The trainer drops examples longer than ``max_length``; a dropped feedback pair would be a silent no-op.

    A flagged prompt holds every retrieved passage (often 1,000+ tokens), so
    the loop's ``max_length`` must cover the service's input budget.
    """
    with train_file.open(encoding="utf-8") as fh:
        wanted = sum(json.loads(line).get("category") in FEEDBACK_CATEGORIES for line in fh if line.strip())
    kept = sum(e.category in FEEDBACK_CATEGORIES for e in examples)
    if kept < wanted:
        raise InvalidInputError(
            f"{wanted - kept} of {wanted} feedback rows are longer than max_length={max_length} tokens and would "
            "not be trained on: raise loop.train.max_length (the service's max_input_tokens + max_new_tokens)"
        )


def anchor_base_rows(examples: list[Any]) -> None:
    """Point the KL at every base row and at no feedback row.

    ``Encoded.answerable`` is what the batches carry to the loss; here it is
    re-aimed to mean "base row": ``loop_loss`` holds every base row, answer or
    refusal, near the adapter we start from (today's behaviour, the snapshot
    teacher) while a feedback row is free to move (the change the flags ask
    for). Without it a few steps on refusal-heavy data taught a half-trained
    adapter to refuse 86% of answerable questions.
    """
    for e in examples:
        e.answerable = e.category not in FEEDBACK_CATEGORIES


def loop_loss_spec(cfg: Any, anchor: bool, base_ce_weight: float) -> Any:
    """The fine-tuning loss, re-aimed: with ``anchor`` the KL covers the base rows (the batch's flag,
    ``anchor_base_rows``) and their CE is scaled by ``base_ce_weight``. At 0 a base row only contributes
    the KL to the starting adapter: replay by distillation, today's behaviour held in place, while the
    feedback rows' CE carries the change. At 1 (or without ``anchor``) it is the fine-tuning loss."""
    if not anchor:
        return ft.loss_spec(cfg)
    return ft.loss_spec(cfg, flagged_ce_weight=base_ce_weight, kl_rows="flagged")


def train_from(
    cfg: Any,
    init_adapter: Path | None,
    settings: Any,
    progress: bool = True,
    anchor: bool = True,
    base_ce_weight: float = 1.0,
) -> dict[str, Any]:
    """Train ``cfg`` (a ``candor.finetune.train.TrainConfig``) starting from ``init_adapter``."""
    apply_thread_settings(cfg.torch_threads)
    import torch
    from transformers import AutoTokenizer

    out = Path(cfg.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a stage output: always rebuilt whole
    out.mkdir(parents=True)
    base_path = ft.base_model_path(cfg, settings)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    examples, dropped = ft.read_examples(Path(cfg.train_file), tokenizer, cfg)
    _check_feedback_kept(Path(cfg.train_file), examples, cfg.max_length)
    if anchor:
        anchor_base_rows(examples)
    device = settings.resolved_device
    model, precision = ft.load_model(cfg, base_path, device)
    if init_adapter is not None:
        from peft import PeftModel

        if not (Path(init_adapter) / "adapter_config.json").exists():
            raise NotFoundError(f"the adapter to start from is missing: {init_adapter}")
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        # name the local base: saving would otherwise look the hub id up online (save_adapter restores the id)
        for conf in model.peft_config.values():
            conf.base_model_name_or_path = str(base_path)
        log.info("warm start from %s (its LoRA shape wins over params lora_*)", init_adapter)
    else:
        model = ft.attach_lora(model, cfg)
        log.info("no adapter to start from: a fresh LoRA")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    # the snapshot teacher is the adapter we start from: taken before the first step
    run_cfg = replace(cfg, snapshot_steps=0)
    spec = loop_loss_spec(cfg, anchor, base_ce_weight)
    facts = ft.fit(
        run_cfg, model, examples, pad_id, spec, resume=False, progress=progress, checkpoints=False, device=device
    )
    records = facts.pop("loss")
    ft.save_adapter(model, out / "adapter", cfg)
    with (out / "loss.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss", "ce", "kl"])
        for r in records:
            w.writerow([r["step"], round(r["loss"], 5), round(r["ce"], 5), round(r.get("kl", 0.0), 5)])
    summary = {
        **{k: facts[k] for k in ("steps", "max_steps", "stop_reason")},
        "init_adapter": str(init_adapter) if init_adapter else None,
        "train_examples": len(examples),
        "dropped_too_long": dropped,
        **{k: facts[k] for k in ("tokens", "train_time_s", "tokens_per_s")},
        "first_loss": records[0]["loss"] if records else None,
        "last_loss": records[-1]["loss"] if records else None,
        "peak_rss_mb": facts["peak_rss_mb"],
        "precision": precision,
        "compute_dtype": resolve_model_dtype(cfg.compute_dtype, device),
        "device": device,
        "kl_on": "base rows" if anchor else cfg.kl_tokens,
        "base_ce_weight": base_ce_weight if anchor else 1.0,
        "torch_threads": facts["torch_threads"],
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
