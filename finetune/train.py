"""QLoRA refusal training: Candor's recipe on ``transformers.Trainer`` (``candor.finetune.trainer``).

The loss is CE on assistant tokens *plus* λ·KL to a teacher that is the same weights with the adapter
switched off (or a snapshot adapter), on a chosen subset of tokens (``candor.finetune.distill``), the
trainer's ``compute_loss``. The config keeps its SFTConfig-style names; they become ``TrainingArguments``.

Cheap on a CPU by design: the LM head (a 49k x 576 matmul) runs only at the positions that carry a loss;
length-grouped batches; no gradient checkpointing unless asked (a 135M model fits easily; recomputation
costs ~30%). The LR schedule follows progress = max(step / max_steps, elapsed / time budget), so a run
that must stop at its time budget still finishes its cosine decay. Checkpoints (``checkpoints/checkpoint-N``:
adapter, optimizer, scheduler, RNG, trainer state, snapshot teacher) every ``save_steps`` and at a time-budget
stop; ``resume`` continues from the newest complete one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.collate import Encoded, as_row, encode_example
from candor.finetune.distill import LossSpec
from candor.profile import (
    CPU,
    is_cuda,
    model_load_kwargs,
    profile_for_model_dir,
    qlora_config,
    resolve_model_dtype,
    trainer_arguments,
)
from candor.prompts import is_refusal
from candor.settings import apply_thread_settings

log = logging.getLogger("candor.finetune.train")

TARGET_PRESETS = {
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
# TrainConfig fields that are TrainingArguments fields of the same name and meaning
SAME_NAMES = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "max_grad_norm",
    "num_train_epochs", "max_steps", "save_steps", "seed",
)  # fmt: skip
BATCH_SHAPE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


@dataclass
class TrainConfig:
    output_dir: str = "var/finetune/runs/main"
    train_file: str = "var/finetune/data/train.jsonl"
    base_model_path: str | None = None  # default: settings.resolved_base_model_path
    base_model_id: str | None = None  # adapter_config.json's base (TGI/vLLM find it); default: the profile's Hub id
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
    kl_skip_first: int = 0  # each answer's first N tokens carry no KL (the teacher's "The answer is:" opening)
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
        if self.kl_skip_first < 0:
            raise InvalidInputError("kl_skip_first must be 0 or more")
        if self.teacher not in ("base", "snapshot"):
            raise InvalidInputError("teacher must be 'base' or 'snapshot'")
        if self.lr_scheduler_type not in ("cosine", "linear", "constant"):
            raise InvalidInputError("lr_scheduler_type must be cosine, linear or constant")

    @property
    def modules(self) -> list[str]:
        t = self.target_modules
        return list(TARGET_PRESETS[t]) if isinstance(t, str) else list(t)


def load_model(cfg: TrainConfig, base_path: Path, device: str = CPU):
    """The base model, 4-bit nf4 when bitsandbytes can (else unquantized, with a loud log line).

    Device, dtype and the QLoRA config come from the profile module (``candor.profile``): computes in
    ``cfg.compute_dtype``, where ``auto`` is bf16 on CUDA and, on a CPU, bf16 only where it runs fast (on an
    AVX2-only CPU a bf16 step took 15x as long as a float32 one). Returns the model and its precision label
    (``nf4`` or the unquantized dtype's short name).
    """
    import torch
    from transformers import AutoModelForCausalLM

    name = resolve_model_dtype(cfg.compute_dtype, device)
    dtype = getattr(torch, name)
    short = {"bfloat16": "bf16", "float32": "fp32"}.get(name, name)
    place = model_load_kwargs(device)
    if cfg.quantization == "nf4":
        try:
            q = qlora_config(device, cfg.compute_dtype)
            model = AutoModelForCausalLM.from_pretrained(
                base_path, quantization_config=q, dtype=dtype, attn_implementation="sdpa", **place
            )
            log.info("loaded %s in 4-bit nf4 (%s compute, double quant) on %s: QLoRA", base_path, short, device)
            return model, "nf4"
        except Exception as exc:  # bitsandbytes missing or no backend for this device
            log.warning("4-bit nf4 unavailable (%s): FALLING BACK to %s LoRA", exc, short)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, attn_implementation="sdpa", **place)
    log.info("loaded %s in %s on %s: plain LoRA", base_path, short, device)
    return model, short


def device_arguments(device: str, compute_dtype: str) -> dict[str, Any]:
    """The profile's device-dependent ``TrainingArguments`` (``candor.profile.trainer_arguments``) without its
    batch shape (the recipe's own) or checkpointing (``attach_lora`` does it when the config asks). On a CPU
    no bf16 autocast: the model is loaded in its compute dtype, as the recipe always trained it."""
    args = trainer_arguments(device, compute_dtype=compute_dtype)
    for key in BATCH_SHAPE + ("gradient_checkpointing", "activation_checkpointing", "activation_checkpointing_kwargs"):
        args.pop(key, None)
    if not is_cuda(device):
        args["bf16"] = False
    return args


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


def save_adapter(model, path: Path, cfg: TrainConfig) -> None:
    """A PEFT adapter dir (adapter_config.json + adapter_model.safetensors) naming the hub base."""
    model.save_pretrained(path)
    conf_path = path / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    conf["base_model_name_or_path"] = cfg.base_model_id
    conf_path.write_text(json.dumps(conf, indent=2) + "\n")


def base_model_path(cfg: TrainConfig, settings: Any) -> Path:
    """The prepared base directory to train on; fills ``cfg.base_model_id`` (the Hub id the adapter will name)
    from the profile that directory was made from, when the config names none."""
    path = Path(cfg.base_model_path) if cfg.base_model_path else settings.resolved_base_model_path
    if not (path / "config.json").exists():
        raise NotFoundError(f"base model not found at {path} (run `candor model prepare`)")
    if not cfg.base_model_id:
        cfg.base_model_id = profile_for_model_dir(path, settings.model_profile).model_id
    return path


def loss_spec(cfg: TrainConfig, flagged_ce_weight: float = 1.0, kl_rows: str | None = None) -> LossSpec:
    return LossSpec(
        first_token_weight=cfg.first_token_weight,
        distill_lambda=cfg.distill_lambda,
        tau=cfg.distill_tau,
        kl_rows=kl_rows or ("flagged" if cfg.kl_tokens == "answerable" else "all"),
        flagged_ce_weight=flagged_ce_weight,
        kl_skip_first=cfg.kl_skip_first,
    )


def fit(
    cfg: TrainConfig,
    model: Any,
    examples: list[Encoded],
    pad_id: int,
    spec: LossSpec,
    *,
    resume: bool,
    progress: bool,
    checkpoints: bool = True,
    device: str = CPU,
) -> dict[str, Any]:
    """Train the adapter on ``examples`` with the Trainer; ``train_log.jsonl`` in ``cfg.output_dir``.

    Returns the run's measured facts (``RunFacts``) plus ``resumed_from``, ``trainable_params`` and ``loss``
    (the per-step log). ``checkpoints=False`` (the retraining loop) saves none and always starts fresh.
    """
    from candor.finetune import trainer as tr
    from candor.finetune.collate import ChatCollator
    from candor.finetune.distill import DistillLoss

    out = Path(cfg.output_dir)
    ckdir = out / "checkpoints"
    ckpt = tr.last_checkpoint(ckdir) if (resume and checkpoints) else None
    if ckpt is None:
        shutil.rmtree(ckdir, ignore_errors=True)
    budget = tr.TimeBudget(cfg.time_budget_minutes, tr.spent_before(ckpt), save=checkpoints)
    facts = tr.RunFacts(budget)
    loss = DistillLoss(model, spec, cfg.teacher, cfg.snapshot_steps)
    loss.load(ckpt)
    args = tr.training_arguments(
        ckdir,
        **{name: getattr(cfg, name) for name in SAME_NAMES},  # TrainConfig keeps the library's names
        logging_steps=cfg.logging_steps if checkpoints else 1,
        save_strategy="steps" if checkpoints else "no",
        save_total_limit=cfg.save_total_limit or None,
        **device_arguments(device, cfg.compute_dtype),
    )
    trainer = tr.CandorTrainer(
        model=model,
        args=args,
        train_dataset=[as_row(e) for e in examples],
        data_collator=ChatCollator(pad_id),
        callbacks=[budget, tr.JsonlLog(out / "train_log.jsonl", budget), facts],
        loss_fn=loss,
        budget=budget,
        schedule=cfg.lr_scheduler_type,
        warmup=cfg.warmup_steps,
        on_checkpoint=loss.save,
    )
    tr.run(trainer, ckpt, progress)
    if not checkpoints:
        shutil.rmtree(ckdir, ignore_errors=True)  # the library made the folder; nothing is in it
    if ckpt is not None:
        log.info("resumed from %s", ckpt)
    log_path = out / "train_log.jsonl"
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        **facts.facts,
        "resumed_from": ckpt,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "loss": records,
    }


def train(cfg: TrainConfig, settings, resume: bool = True, progress: bool = True) -> dict:
    """Run (or resume) training; returns the summary also written to ``train_summary.json``."""
    apply_thread_settings(cfg.torch_threads)
    import random

    import torch
    from transformers import AutoTokenizer

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_path = base_model_path(cfg, settings)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the LoRA's initial weights
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    examples, dropped = read_examples(Path(cfg.train_file), tokenizer, cfg)
    device = settings.resolved_device
    model, precision = load_model(cfg, base_path, device)
    model = attach_lora(model, cfg)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    run_facts = fit(cfg, model, examples, pad_id, loss_spec(cfg), resume=resume, progress=progress, device=device)
    run_facts.pop("loss")
    save_adapter(model, out / "adapter", cfg)
    summary = {
        **run_facts,
        "examples_seen": round(run_facts["epochs"] * len(examples)),
        "train_examples": len(examples),
        "dropped_too_long": dropped,
        "precision": precision,
        "compute_dtype": resolve_model_dtype(cfg.compute_dtype, device),
        "device": device,
        "adapter_dir": str(out / "adapter"),
        "config": asdict(cfg),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
