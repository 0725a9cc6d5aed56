"""QLoRA refusal training in plain PyTorch + peft, top to bottom.

Why not TRL's SFTTrainer: the loss here is CE on assistant tokens *plus* a KL
to a teacher that is the same weights with the adapter switched off (or a
snapshot adapter), on a chosen subset of tokens; written out, each step is one
screen of code. The config mirrors TRL's SFTConfig names where they exist.

Cheap on a CPU by design: the LM head (a 49k x 576 matmul) runs only at the
positions that carry a loss; length-grouped batches; no gradient checkpointing
unless asked (a 135M model fits easily; recomputation costs ~30%). The LR
schedule follows progress = max(step / max_steps, elapsed / time budget), so a
run that must stop at its time budget still finishes its cosine decay.
Checkpoints hold the adapter, optimizer, data cursor, RNG and elapsed time;
``resume`` continues from the newest one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.collate import Encoded, encode_example, length_grouped_batches, pad_batch
from candor.finetune.distill import kl_loss
from candor.hardware import resolve_dtype
from candor.prompts import is_refusal
from candor.settings import apply_thread_settings

log = logging.getLogger("candor.finetune.train")

TARGET_PRESETS = {
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
HUB_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class TrainConfig:
    output_dir: str = "var/finetune/runs/main"
    train_file: str = "var/finetune/data/train.jsonl"
    base_model_path: str | None = None  # default: settings.resolved_base_model_path
    base_model_id: str = HUB_BASE_ID  # written into adapter_config.json, so TGI/vLLM find the base
    seed: int = 13
    # optimisation (SFTConfig names)
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 2
    warmup_steps: int = 20
    lr_scheduler_type: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512  # longer examples are dropped (counted in the log), never truncated
    gradient_checkpointing: bool = False
    logging_steps: int = 5
    save_steps: int = 25
    save_total_limit: int = 2
    time_budget_minutes: float = 0.0  # 0 = none
    torch_threads: int = 1
    # model
    quantization: str = "nf4"  # nf4 (QLoRA, double quant) | none (LoRA on the unquantized base)
    compute_dtype: str = "auto"  # auto (bf16 where the CPU runs it fast, else float32) | bfloat16 | float32
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # a preset name or a list of module names
    lora_layers: int = 0  # 0 = every layer; N = only the top N layers (backward then stops there: cheaper)
    # loss
    first_token_weight: float = 1.0  # the first answer token carries the answer/refuse decision
    distill_lambda: float = 0.0  # 0 = plain SFT
    distill_tau: float = 0.5
    kl_tokens: str = "answerable"  # answerable | all
    teacher: str = "base"  # base (adapter disabled) | snapshot (adapter after snapshot_steps)
    snapshot_steps: int = 20
    limit_examples: int = 0  # 0 = all (tests use a handful)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str) and self.target_modules not in TARGET_PRESETS:
            raise InvalidInputError(f"target_modules {self.target_modules!r}: use one of {list(TARGET_PRESETS)}")
        if self.quantization not in ("nf4", "none"):
            raise InvalidInputError("quantization must be 'nf4' or 'none'")
        if self.compute_dtype not in ("auto", "bfloat16", "float32"):
            raise InvalidInputError("compute_dtype must be 'auto', 'bfloat16' or 'float32'")
        if self.kl_tokens not in ("answerable", "all"):
            raise InvalidInputError("kl_tokens must be 'answerable' or 'all'")
        if self.teacher not in ("base", "snapshot"):
            raise InvalidInputError("teacher must be 'base' or 'snapshot'")
        if self.lr_scheduler_type not in ("cosine", "linear", "constant"):
            raise InvalidInputError("lr_scheduler_type must be cosine, linear or constant")

    @property
    def modules(self) -> list[str]:
        t = self.target_modules
        return list(TARGET_PRESETS[t]) if isinstance(t, str) else list(t)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_model(cfg: TrainConfig, base_path: Path):
    """The base model, 4-bit nf4 when bitsandbytes can (else unquantized, with a loud log line).

    Computes in ``cfg.compute_dtype``; ``auto`` is bf16 only on a CPU that runs it fast
    (``candor.hardware``): on an AVX2-only CPU a bf16 step took 15x as long as a float32 one.
    Returns the model and its precision label (``nf4`` or the unquantized dtype's short name).
    """
    import torch
    from transformers import AutoModelForCausalLM

    name = resolve_dtype(cfg.compute_dtype)
    dtype = getattr(torch, name)
    short = {"bfloat16": "bf16", "float32": "fp32"}[name]
    if cfg.quantization == "nf4":
        try:
            from transformers import BitsAndBytesConfig

            q = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
            model = AutoModelForCausalLM.from_pretrained(
                base_path, quantization_config=q, dtype=dtype, attn_implementation="sdpa"
            )
            log.info("loaded %s in 4-bit nf4 (%s compute, double quant): QLoRA", base_path, short)
            return model, "nf4"
        except Exception as exc:  # bitsandbytes missing or no backend for this device
            log.warning("4-bit nf4 unavailable (%s): FALLING BACK to %s LoRA", exc, short)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, attn_implementation="sdpa")
    log.info("loaded %s in %s: plain LoRA", base_path, short)
    return model, short


def attach_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.gradient_checkpointing:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    n_layers = model.config.num_hidden_layers
    layers = None
    if cfg.lora_layers:
        if not 0 < cfg.lora_layers <= n_layers:
            raise InvalidInputError(f"lora_layers must be between 1 and {n_layers}")
        layers = list(range(n_layers - cfg.lora_layers, n_layers))
    lcfg = LoraConfig(
        layers_to_transform=layers,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.modules,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, lcfg)


def read_examples(path: Path, tokenizer, cfg: TrainConfig) -> tuple[list[Encoded], int]:
    if not path.exists():
        raise NotFoundError(f"training data not found: {path} (run `candor finetune build-data`)")
    encoded, dropped = [], 0
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                messages = row["messages"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InvalidInputError(f"{path}:{n}: expected a JSON object with 'messages'") from None
            if not messages or messages[-1].get("role") != "assistant":
                raise InvalidInputError(f"{path}:{n}: the last message must be the assistant's answer")
            enc = encode_example(tokenizer, messages, not is_refusal(messages[-1]["content"]), row.get("category", ""))
            if len(enc.input_ids) > cfg.max_length:
                dropped += 1
                continue
            encoded.append(enc)
            if cfg.limit_examples and len(encoded) >= cfg.limit_examples:
                break
    if not encoded:
        raise InvalidInputError(f"{path}: no usable training examples (max_length={cfg.max_length})")
    return encoded, dropped


def _inner(model):
    """The LlamaForCausalLM under the peft wrappers (its .model trunk and .lm_head)."""
    return model.base_model.model


def head_logits(model, input_ids, attention_mask, positions):
    """Hidden states of the trunk, then the LM head only at ``positions`` (a [N, 2] index)."""
    inner = _inner(model)
    hidden = inner.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    picked = hidden[positions[:, 0], positions[:, 1]]
    return inner.lm_head(picked)


def compute_loss(model, batch, cfg: TrainConfig, teacher_swap=None):
    """CE on answer tokens (+ λ·KL to the teacher on the selected answer tokens)."""
    import torch
    import torch.nn.functional as F

    ids, mask, labels, answerable = batch
    # position t predicts token t+1: positions whose *next* label is set
    target = labels[:, 1:]
    pos = (target != -100).nonzero()
    gold = target[pos[:, 0], pos[:, 1]]
    logits = head_logits(model, ids, mask, pos)
    ce = F.cross_entropy(logits.float(), gold, reduction="none")
    # the first answer token of each row gets its own weight
    first = torch.ones_like(ce, dtype=torch.bool)  # nonzero() is row-major: a new row starts an answer
    first[1:] = pos[1:, 0] != pos[:-1, 0]
    w = torch.where(first, cfg.first_token_weight, 1.0)
    ce_loss = (ce * w).sum() / w.sum()
    parts = {"ce": float(ce_loss.detach()), "n_tokens": int(ids.numel()), "n_loss_tokens": int(len(gold))}
    loss = ce_loss
    if cfg.distill_lambda > 0 and teacher_swap is not None:
        sel = answerable[pos[:, 0]] if cfg.kl_tokens == "answerable" else torch.ones_like(gold, dtype=torch.bool)
        if bool(sel.any()):
            with torch.no_grad(), teacher_swap():
                t_logits = head_logits(model, ids, mask, pos[sel])
            kl = kl_loss(logits[sel], t_logits, cfg.distill_tau)
            loss = loss + cfg.distill_lambda * kl
            parts["kl"] = float(kl.detach())
        else:
            parts["kl"] = 0.0
    parts["loss"] = float(loss.detach())
    return loss, parts


class SnapshotTeacher:
    """A frozen copy of the adapter weights, swapped in for the teacher's forward pass."""

    def __init__(self, params: list):
        self.params = params
        self.saved = [p.detach().clone() for p in params]

    def __call__(self):
        return self

    def __enter__(self):
        for p, t in zip(self.params, self.saved, strict=True):
            p.data, t.data = t.data, p.data
        return self

    def __exit__(self, *exc):
        for p, t in zip(self.params, self.saved, strict=True):
            p.data, t.data = t.data, p.data
        return False


def lr_at(cfg: TrainConfig, progress: float, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_steps + 1)
    p = min(max(progress, 0.0), 1.0)
    if cfg.lr_scheduler_type == "cosine":
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * p))
    if cfg.lr_scheduler_type == "linear":
        return cfg.learning_rate * (1 - p)
    return cfg.learning_rate


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    ckpts = [c for c in ckpts if (c / "state.pt").exists()]
    return ckpts[-1] if ckpts else None


def _save_checkpoint(out: Path, model, optimizer, state: dict, cfg: TrainConfig, teacher) -> None:
    import torch

    ckdir = out / "checkpoints"
    final = ckdir / f"step-{state['step']:06d}"
    tmp = ckdir / f".tmp-step-{state['step']:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    payload = {
        "adapter": trainable,
        "optimizer": optimizer.state_dict(),
        "state": state,
        "teacher": [t.clone() for t in teacher.saved] if isinstance(teacher, SnapshotTeacher) else None,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    torch.save(payload, tmp / "state.pt")
    model.save_pretrained(tmp / "adapter")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(ckdir.glob("step-*"))[: -cfg.save_total_limit or None]:
        if cfg.save_total_limit > 0:
            shutil.rmtree(old, ignore_errors=True)


def save_adapter(model, path: Path, cfg: TrainConfig) -> None:
    """A PEFT adapter dir (adapter_config.json + adapter_model.safetensors) naming the hub base."""
    model.save_pretrained(path)
    conf_path = path / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    conf["base_model_name_or_path"] = cfg.base_model_id
    conf_path.write_text(json.dumps(conf, indent=2) + "\n")


def train(cfg: TrainConfig, settings, resume: bool = True, progress: bool = True) -> dict:
    """Run (or resume) training; returns the summary also written to ``train_summary.json``."""
    apply_thread_settings(cfg.torch_threads)
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_path = Path(cfg.base_model_path) if cfg.base_model_path else settings.resolved_base_model_path
    if not (base_path / "config.json").exists():
        raise NotFoundError(f"base model not found at {base_path} (run `candor model prepare`)")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    examples, dropped = read_examples(Path(cfg.train_file), tokenizer, cfg)
    lengths = [len(e.input_ids) for e in examples]
    model, precision = load_model(cfg, base_path)
    model = attach_lora(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    batches_per_epoch = len(length_grouped_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, 0))
    steps_per_epoch = max(1, batches_per_epoch // cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.num_train_epochs)
    budget_s = cfg.time_budget_minutes * 60

    state = {"step": 0, "epoch": 0, "cursor": 0, "elapsed_s": 0.0, "tokens": 0, "examples": 0}
    teacher = None
    if cfg.distill_lambda > 0 and cfg.teacher == "base":
        teacher = model.disable_adapter  # a context manager: the base model, no second copy in memory
    ckpt = _latest_checkpoint(out) if resume else None
    log_path = out / "train_log.jsonl"
    if ckpt is not None:
        payload = torch.load(ckpt / "state.pt", weights_only=False)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in payload["adapter"].items():
                named[n].copy_(t)
        optimizer.load_state_dict(payload["optimizer"])
        state = payload["state"]
        random.setstate(payload["rng"]["python"])
        torch.set_rng_state(payload["rng"]["torch"])
        if payload.get("teacher") is not None:
            teacher = SnapshotTeacher(params)
            teacher.saved = payload["teacher"]
        log.info("resumed from %s (step %d)", ckpt, state["step"])
    elif log_path.exists():
        log_path.unlink()
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    batches = length_grouped_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, state["epoch"])
    bar = tqdm(total=max_steps, initial=state["step"], disable=not progress, desc="train", dynamic_ncols=True)
    t_start = time.monotonic() - state["elapsed_s"]
    window: list[dict] = []
    stop_reason = "max_steps"
    while state["step"] < max_steps:
        if (
            cfg.distill_lambda > 0
            and cfg.teacher == "snapshot"
            and teacher is None
            and (state["step"] >= cfg.snapshot_steps)
        ):
            teacher = SnapshotTeacher(params)
            log.info("teacher snapshot taken at step %d", state["step"])
        step_parts = []
        for _ in range(cfg.gradient_accumulation_steps):
            if state["cursor"] >= len(batches):
                state["epoch"] += 1
                state["cursor"] = 0
                batches = length_grouped_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, state["epoch"])
            idx = batches[state["cursor"]]
            state["cursor"] += 1
            batch = pad_batch([examples[i] for i in idx], pad_id)
            loss, parts = compute_loss(model, batch, cfg, teacher)
            (loss / cfg.gradient_accumulation_steps).backward()
            step_parts.append(parts)
            state["tokens"] += parts["n_tokens"]
            state["examples"] += len(idx)
        elapsed = time.monotonic() - t_start
        prog = max(state["step"] / max_steps, elapsed / budget_s if budget_s else 0.0)
        lr = lr_at(cfg, prog, state["step"])
        for g in optimizer.param_groups:
            g["lr"] = lr
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["elapsed_s"] = time.monotonic() - t_start
        rec = {
            "step": state["step"],
            "epoch": state["epoch"] + state["cursor"] / max(1, len(batches)),
            "lr": lr,
            "grad_norm": grad_norm,
            "loss": sum(p["loss"] for p in step_parts) / len(step_parts),
            "ce": sum(p["ce"] for p in step_parts) / len(step_parts),
            "tokens": state["tokens"],
            "elapsed_s": round(state["elapsed_s"], 1),
            "tokens_per_s": round(state["tokens"] / max(state["elapsed_s"], 1e-9), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if any("kl" in p for p in step_parts):
            rec["kl"] = sum(p.get("kl", 0.0) for p in step_parts) / len(step_parts)
        window.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if state["step"] % cfg.logging_steps == 0 or state["step"] == max_steps:
            with log_path.open("a", encoding="utf-8") as fh:
                for r in window:
                    fh.write(json.dumps(r) + "\n")
            window.clear()
        if budget_s and state["elapsed_s"] >= budget_s:
            stop_reason = "time_budget"
        if state["step"] % cfg.save_steps == 0 or stop_reason == "time_budget" or state["step"] == max_steps:
            if window:
                with log_path.open("a", encoding="utf-8") as fh:
                    for r in window:
                        fh.write(json.dumps(r) + "\n")
                window.clear()
            _save_checkpoint(out, model, optimizer, state, cfg, teacher)
        if stop_reason == "time_budget":
            break
    bar.close()
    save_adapter(model, out / "adapter", cfg)
    summary = {
        "steps": state["step"],
        "max_steps": max_steps,
        "stop_reason": stop_reason,
        "epochs": state["epoch"] + state["cursor"] / max(1, len(batches)),
        "examples_seen": state["examples"],
        "train_examples": len(examples),
        "dropped_too_long": dropped,
        "tokens": state["tokens"],
        "train_time_s": round(state["elapsed_s"], 1),
        "tokens_per_s": round(state["tokens"] / max(state["elapsed_s"], 1e-9), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "precision": precision,
        "compute_dtype": resolve_dtype(cfg.compute_dtype),
        "trainable_params": sum(p.numel() for p in params),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "adapter_dir": str(out / "adapter"),
        "config": asdict(cfg),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
