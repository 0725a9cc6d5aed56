"""Candor's one training loop: ``transformers.Trainer`` with Candor's own parts plugged in.

The library runs the loop: batching and length grouping (``train_sampling_strategy="group_by_length"``),
gradient accumulation, clipping, the optimizer, checkpoints (``checkpoint-N`` folders: weights,
optimizer, scheduler, RNG, ``trainer_state.json``), resume, logging and device placement. Candor adds
small pieces the library takes:

- a loss (``LossFn``: ``(model, inputs, global_step) -> (loss, parts)``) called from ``compute_loss``:
  the refusal adapter's CE + λ·KL (``candor.finetune.distill.DistillLoss``), the verifier's BCE. It is a
  per-micro-batch mean, so the Trainer divides it by the accumulation steps (``loss_is_scaled_for_ga``);
  its ``parts`` (ce, kl) are averaged into the logged record beside the library's loss, lr and grad norm;
- a schedule that follows progress = max(step / max_steps, elapsed / time budget), so a run that must stop
  at its budget still finishes its decay (``create_scheduler``);
- callbacks: ``TimeBudget`` (save and stop when the budget is spent; the next run resumes; its elapsed time
  travels in ``trainer_state.json``), ``JsonlLog`` (one ``train_log.jsonl`` record per logged step, with
  tokens/s and peak RSS; cut back to the checkpoint on resume, so no step is logged twice) and
  ``RunFacts`` (the measured numbers every run summary and model card carry).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback

TRAINER_STATE = "trainer_state.json"
SCHEDULES = ("cosine", "linear", "constant")


class LossFn(Protocol):
    """Candor's loss for one micro-batch: the loss tensor and float parts to log (``ce``, ``kl``, ...)."""

    def __call__(self, model: Any, inputs: dict[str, Any], global_step: int) -> tuple[Any, dict[str, float]]: ...


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lr_factor(kind: str, warmup_steps: int, step: int, progress: float) -> float:
    """The learning rate as a fraction of the peak: linear warm-up over ``warmup_steps``, then ``kind`` over
    ``progress`` in [0, 1] (the recipe's schedule since the first adapter, warm-up counted in the decay)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    p = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * p))
    if kind == "linear":
        return 1 - p
    return 1.0


class TimeBudget(TrainerCallback, ExportableState):
    """Save and stop once the run has spent ``minutes`` (0 = no budget).

    ``spent_s`` is the time earlier invocations already used: a resumed run passes the checkpoint's
    (``spent_before``), so the budget is the whole run's; the reader passes 0: a budget per invocation.
    ``save=False`` (a run without checkpoints) only stops.
    """

    def __init__(self, minutes: float = 0.0, spent_s: float = 0.0, save: bool = True) -> None:
        self.budget_s = minutes * 60 if minutes and minutes > 0 else 0.0
        self.save = save
        self.spent_before = spent_s
        self.started: float | None = None
        self.stopped_early = False

    def elapsed_s(self) -> float:
        return self.spent_before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def fraction(self) -> float:
        return self.elapsed_s() / self.budget_s if self.budget_s else 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        # a checkpoint written before this callback kept state has no entry for it, and the library's save
        # looks the entry up by name: without this, resuming such a checkpoint fails at its first save
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def on_step_end(self, args, state, control, **kwargs):
        if self.budget_s and self.elapsed_s() >= self.budget_s and state.global_step < state.max_steps:
            control.should_save = self.save
            control.should_training_stop = True
            self.stopped_early = True
        return control

    def state(self) -> dict:
        return {"args": {"minutes": self.budget_s / 60}, "attributes": {"spent_before": self.elapsed_s()}}


def spent_before(checkpoint: str | None) -> float:
    """The training time a checkpoint's run had used (``TimeBudget``'s saved state), 0 without one."""
    if checkpoint is None:
        return 0.0
    data = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
    saved = data.get("stateful_callbacks", {}).get(TimeBudget.__name__) or {}
    return float(saved.get("attributes", {}).get("spent_before", 0.0))


# what the library adds to a step's logs that the record states its own way (or not at all)
_NOT_STEP_FIELDS = {"learning_rate", "grad_norm", "epoch", "num_input_tokens_seen", "train_runtime"}
_NOT_STEP_FIELDS |= {"train_tokens_per_second"}


class JsonlLog(TrainerCallback):
    """Each logged step as one JSON line (step, epoch, lr, grad_norm, loss and the loss parts, tokens,
    elapsed_s, tokens_per_s, peak_rss_mb). A fresh run starts the file; a resumed one keeps the lines up to
    its checkpoint's step and drops any a killed run wrote after it."""

    def __init__(self, path: Path, budget: TimeBudget) -> None:
        self.path = Path(path)
        self.budget = budget

    def on_train_begin(self, args, state, control, **kwargs):
        kept = []
        if state.global_step > 0 and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line)["step"] <= state.global_step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return  # the end-of-training metrics
        elapsed = self.budget.elapsed_s()
        tokens = int(state.num_input_tokens_seen or 0)
        rec = {"step": state.global_step, "epoch": state.epoch, "lr": logs.get("learning_rate")}
        rec["grad_norm"] = logs.get("grad_norm")
        rec.update({k: v for k, v in logs.items() if k not in _NOT_STEP_FIELDS})
        rec.update(
            tokens=tokens,
            elapsed_s=round(elapsed, 1),
            tokens_per_s=round(tokens / max(elapsed, 1e-9), 1),
            peak_rss_mb=round(peak_rss_mb(), 1),
        )
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


class RunFacts(TrainerCallback):
    """The measured facts of a run, gathered when training ends (``facts``): what every run summary and
    model card states (steps, stop reason, epochs, tokens, time, tokens/s, peak RSS, threads)."""

    def __init__(self, budget: TimeBudget) -> None:
        self.budget = budget
        self.facts: dict[str, Any] = {}

    def on_train_end(self, args, state, control, **kwargs):
        elapsed = self.budget.elapsed_s()
        tokens = int(state.num_input_tokens_seen or 0)
        self.facts = {
            "steps": state.global_step,
            "max_steps": state.max_steps,
            "stop_reason": "time_budget" if self.budget.stopped_early else "max_steps",
            "epochs": state.epoch or 0.0,
            "tokens": tokens,
            "train_time_s": round(elapsed, 1),
            "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        }


class CandorTrainer(Trainer):
    """``Trainer`` whose ``compute_loss`` is a Candor ``LossFn`` and whose schedule follows the time budget.

    ``on_checkpoint(folder)`` runs inside each checkpoint save, before ``trainer_state.json`` is written
    (the distillation loss stores its snapshot teacher there), so a checkpoint with a state is complete.
    """

    loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer divides it by the accumulation

    def __init__(
        self,
        *args: Any,
        loss_fn: LossFn,
        budget: TimeBudget,
        schedule: str = "linear",
        warmup: int = 0,
        on_checkpoint: Callable[[Path], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.budget = budget
        self.schedule = schedule
        self.warmup = warmup
        self.on_checkpoint = on_checkpoint
        self.model_accepts_loss_kwargs = False  # no token count needed: nothing is normalised by it
        self._parts: list[dict[str, float]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, parts = self.loss_fn(model, inputs, self.state.global_step)
        self._parts.append(parts)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts:
            for key in sorted({k for p in self._parts for k in p}):
                values = [p[key] for p in self._parts if key in p]
                logs[key] = sum(values) / len(values)
            self._parts = []
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            kind, warmup, budget = self.schedule, self.warmup, self.budget

            def factor(step: int) -> float:
                return lr_factor(kind, warmup, step, max(step / max(1, num_training_steps), budget.fraction()))

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if _internal_call and self.on_checkpoint is not None and output_dir is not None:
            self.on_checkpoint(Path(output_dir))


def training_arguments(output_dir: Path, **overrides: Any):
    """``TrainingArguments`` with Candor's defaults: AdamW, length-grouped batches, no reporting, per-step
    logging, token counting."""
    from transformers import TrainingArguments

    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "optim": "adamw_torch",
        "train_sampling_strategy": "group_by_length",
        "report_to": [],
        "disable_tqdm": True,
        "logging_steps": 1,
        "save_strategy": "steps",
        "include_num_input_tokens_seen": "all",  # padded tokens, as the recipe has always counted them
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "remove_unused_columns": False,  # Candor's collators give the loss what it needs, nothing more
    }
    args.update(overrides)
    return TrainingArguments(**args)


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint (one whose ``trainer_state.json``, written last, exists) under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / TRAINER_STATE).exists()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def run(trainer: Trainer, resume_from: str | None, progress: bool = False) -> None:
    """``trainer.train``, quiet unless ``progress`` (a tqdm bar, no printed dicts).

    A checkpoint that already reached this run's end trains nothing more (the Trainer would take one more
    step): its weights and state are taken as the run's, and the callbacks see the run begin and end.
    """
    from transformers.trainer_callback import TrainerState

    trainer.remove_callback(PrinterCallback)
    if not progress:
        trainer.remove_callback(ProgressCallback)
    elif not any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks):
        trainer.add_callback(ProgressCallback)
    if resume_from is not None:
        saved = TrainerState.load_from_json(str(Path(resume_from) / TRAINER_STATE))
        end = trainer.args.max_steps if trainer.args.max_steps > 0 else saved.max_steps
        if saved.global_step >= end:
            trainer._load_from_checkpoint(resume_from)  # what train(resume_from_checkpoint=...) loads first
            trainer.state = saved
            handler, args = trainer.callback_handler, trainer.args
            trainer.control = handler.on_train_begin(args, saved, trainer.control)
            trainer.control = handler.on_train_end(args, saved, trainer.control)
            return
    trainer.train(resume_from_checkpoint=resume_from)
