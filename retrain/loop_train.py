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

A loop run is short, so there are no checkpoints: a failed run is rerun by
``dvc repro``. It writes ``adapter/``, ``train_log.jsonl``, ``loss.csv`` (the
plot) and ``train_summary.json`` into ``output_dir``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune import train as ft
from candor.finetune.collate import length_grouped_batches, pad_batch
from candor.finetune.distill import kl_loss
from candor.finetune.train import head_logits
from candor.hardware import resolve_dtype
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


def loop_loss(model: Any, batch: Any, cfg: Any, teacher: Any, base_ce_weight: float) -> tuple[Any, dict]:
    """The fine-tuning loss with base rows' CE scaled by ``base_ce_weight``.

    ``batch``'s fourth tensor marks base rows (``anchor_base_rows``). At 0 a
    base row only contributes the KL to the starting adapter: replay by
    distillation, today's behaviour held in place, while the feedback rows'
    CE carries the change. At 1 this is ``candor.finetune.train.compute_loss``.
    """
    import torch
    import torch.nn.functional as F

    ids, mask, labels, base_row = batch
    target = labels[:, 1:]
    pos = (target != -100).nonzero()
    gold = target[pos[:, 0], pos[:, 1]]
    logits = head_logits(model, ids, mask, pos)
    ce = F.cross_entropy(logits.float(), gold, reduction="none")
    first = torch.ones_like(ce, dtype=torch.bool)
    first[1:] = pos[1:, 0] != pos[:-1, 0]
    on_base = base_row[pos[:, 0]]
    w = torch.where(first, cfg.first_token_weight, 1.0) * torch.where(on_base, base_ce_weight, 1.0)
    ce_loss = (ce * w).sum() / w.sum().clamp_min(1e-8)
    parts = {"ce": float(ce_loss.detach()), "n_tokens": int(ids.numel()), "n_loss_tokens": int(len(gold))}
    loss = ce_loss
    if cfg.distill_lambda > 0 and teacher is not None and bool(on_base.any()):
        with torch.no_grad(), teacher():
            t_logits = head_logits(model, ids, mask, pos[on_base])
        kl = kl_loss(logits[on_base], t_logits, cfg.distill_tau)
        loss = loss + cfg.distill_lambda * kl
        parts["kl"] = float(kl.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


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
    from tqdm import tqdm
    from transformers import AutoTokenizer

    out = Path(cfg.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a stage output: always rebuilt whole
    out.mkdir(parents=True)
    base_path = Path(cfg.base_model_path) if cfg.base_model_path else settings.resolved_base_model_path
    if not (base_path / "config.json").exists():
        raise NotFoundError(f"base model not found at {base_path} (run `candor model prepare`)")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    examples, dropped = ft.read_examples(Path(cfg.train_file), tokenizer, cfg)
    _check_feedback_kept(Path(cfg.train_file), examples, cfg.max_length)
    if anchor:
        anchor_base_rows(examples)
    lengths = [len(e.input_ids) for e in examples]
    model, precision = ft.load_model(cfg, base_path)
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
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    teacher = None
    if cfg.distill_lambda > 0:
        teacher = ft.SnapshotTeacher(params) if cfg.teacher == "snapshot" else model.disable_adapter
    batches_per_epoch = len(length_grouped_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, 0))
    steps_per_epoch = max(1, batches_per_epoch // cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.num_train_epochs)
    budget_s = cfg.time_budget_minutes * 60
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    epoch, cursor, tokens, step = 0, 0, 0, 0
    batches = length_grouped_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, epoch)
    records: list[dict[str, Any]] = []
    stop_reason = "max_steps"
    t0 = time.monotonic()
    with tqdm(total=max_steps, disable=not progress, desc="loop train", dynamic_ncols=True) as bar:
        while step < max_steps:
            parts_list = []
            for _ in range(cfg.gradient_accumulation_steps):
                if cursor >= len(batches):
                    epoch, cursor = epoch + 1, 0
                    batches = length_grouped_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, epoch)
                batch = pad_batch([examples[i] for i in batches[cursor]], pad_id)
                cursor += 1
                if anchor:
                    loss, parts = loop_loss(model, batch, cfg, teacher, base_ce_weight)
                else:
                    loss, parts = ft.compute_loss(model, batch, cfg, teacher)
                (loss / cfg.gradient_accumulation_steps).backward()
                parts_list.append(parts)
                tokens += parts["n_tokens"]
            elapsed = time.monotonic() - t0
            lr = ft.lr_at(cfg, max(step / max_steps, elapsed / budget_s if budget_s else 0.0), step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n = len(parts_list)
            rec = {
                "step": step,
                "epoch": round(epoch + cursor / max(1, len(batches)), 3),
                "lr": lr,
                "loss": sum(p["loss"] for p in parts_list) / n,
                "ce": sum(p["ce"] for p in parts_list) / n,
                "kl": sum(p.get("kl", 0.0) for p in parts_list) / n,
                "grad_norm": grad_norm,
                "elapsed_s": round(time.monotonic() - t0, 1),
            }
            records.append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if budget_s and time.monotonic() - t0 >= budget_s:
                stop_reason = "time_budget"
                break
    ft.save_adapter(model, out / "adapter", cfg)
    with (out / "train_log.jsonl").open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    with (out / "loss.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss", "ce", "kl"])
        for r in records:
            w.writerow([r["step"], round(r["loss"], 5), round(r["ce"], 5), round(r["kl"], 5)])
    seconds = time.monotonic() - t0
    summary = {
        "steps": step,
        "max_steps": max_steps,
        "stop_reason": stop_reason,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "train_examples": len(examples),
        "dropped_too_long": dropped,
        "tokens": tokens,
        "train_time_s": round(seconds, 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "first_loss": records[0]["loss"] if records else None,
        "last_loss": records[-1]["loss"] if records else None,
        "peak_rss_mb": round(ft.peak_rss_mb(), 1),
        "precision": precision,
        "compute_dtype": resolve_dtype(cfg.compute_dtype),
        "kl_on": "base rows" if anchor else cfg.kl_tokens,
        "base_ce_weight": base_ce_weight if anchor else 1.0,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
