"""Train the answerability verifier (``candor finetune train-verifier``), top to bottom.

Data: (question, passage, answerable) pairs from SQuAD-2.0-style data, on the
train side of the same article split the dataset builder uses (the validation
articles choose the threshold; dev is never touched). Four kinds of pair:

- answerable: an answerable question with its own paragraph → 1;
- unanswerable: SQuAD's impossible question with the paragraph it was written
  against → 0 (the hard case: the paragraph looks relevant);
- retrieval_miss: an answerable question with another paragraph of the same
  article → 0 (what a retrieval miss looks like to the service);
- answer_removed: an answerable question with its paragraph minus every
  sentence holding an answer → 0 (relevant text, answer gone).

Model: the embedding encoder (all-MiniLM-L6-v2) with a one-logit head, word
embeddings frozen (they are half the weights and the saved folder then holds
only the encoder layers and head), BCE, AdamW, linear warmup and decay,
length-grouped batches, bf16 autocast where the CPU runs bf16 fast (else float32). It trains through the one
training loop (``candor.finetune.trainer``: ``transformers.Trainer`` with the BCE as its loss): checkpoints
every ``save_steps`` and at the end, ``resume`` continues the newest, a time budget saves and stops.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from candor.answerability import FORMAT, WEIGHTS_FILE, VerifierMeta, describe_base_model, load_classifier
from candor.errors import InvalidInputError
from candor.finetune.dataset import split_articles
from candor.finetune.encoder_run import EncoderRunConfig, threshold_report
from candor.finetune.metrics import Scored
from candor.finetune.squad import Corpus, Question
from candor.hardware import auto_float_dtype
from candor.profile import CPU, tensors_device
from candor.settings import apply_thread_settings

log = logging.getLogger("candor.finetune.verifier")

KINDS = ("answerable", "unanswerable", "retrieval_miss", "answer_removed")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass
class VerifierConfig(EncoderRunConfig):
    output_dir: str = "var/finetune/verifier"
    removed_ratio: float = 0.3
    max_length: int = 320
    learning_rate: float = 8e-5
    warmup_ratio: float = 0.06
    logging_steps: int = 25
    limit_pairs: int = 0  # 0 = all (tests use a handful)
    val_limit: int = 600

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or self.max_length < 16:
            raise InvalidInputError("verifier batch_size must be >= 1 and max_length >= 16")


@dataclass(frozen=True)
class Pair:
    question: str
    passage: str
    label: int  # 1 = the passage answers the question
    kind: str
    article: str


def remove_answer_sentences(text: str, answers: tuple[str, ...]) -> str | None:
    """The paragraph without the sentences that hold an answer; None if an answer survives or nothing is left."""
    wanted = [a.lower() for a in answers if a.strip()]
    if not wanted:
        return None
    sentences = _SENTENCE_END.split(text)
    kept = [s for s in sentences if not any(a in s.lower() for a in wanted)]
    if len(kept) == len(sentences) or not kept:
        return None
    rest = " ".join(kept)
    if any(a in rest.lower() for a in wanted):
        return None
    return rest


def build_pairs(corpus: Corpus, cfg: VerifierConfig, salt: str) -> list[Pair]:
    """Every question once with its own paragraph, plus the derived negatives; deterministic, shuffled."""
    rng = random.Random(f"verifier:{salt}:{cfg.seed}")
    by_article: dict[str, list[str]] = {}
    for doc_id in sorted(corpus.paragraphs):
        by_article.setdefault(corpus.paragraphs[doc_id].article, []).append(doc_id)
    pairs: list[Pair] = []
    for q in sorted(corpus.questions, key=lambda q: q.id):
        para = corpus.paragraphs[q.doc_id]
        pairs.append(Pair(q.question, para.text, 0 if q.is_impossible else 1, _kind(q), para.article))
        if q.is_impossible:
            continue
        others = [d for d in by_article[para.article] if d != q.doc_id]
        if others and rng.random() < cfg.miss_ratio:
            other = corpus.paragraphs[rng.choice(others)]
            if not any(a.lower() in other.text.lower() for a in q.answers):
                pairs.append(Pair(q.question, other.text, 0, "retrieval_miss", para.article))
        if rng.random() < cfg.removed_ratio:
            rest = remove_answer_sentences(para.text, q.answers)
            if rest is not None:
                pairs.append(Pair(q.question, rest, 0, "answer_removed", para.article))
    rng.shuffle(pairs)
    return pairs


def _kind(q: Question) -> str:
    return "unanswerable" if q.is_impossible else "answerable"


def pair_stats(pairs: list[Pair]) -> dict:
    counts = {k: sum(p.kind == k for p in pairs) for k in KINDS}
    return {"pairs": len(pairs), "positive": sum(p.label for p in pairs), "by_kind": counts}


def _encode(tokenizer, batch: list[Pair], max_length: int):
    return tokenizer(
        [p.question for p in batch],
        [p.passage for p in batch],
        truncation="only_second",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )


def score_pairs(model, tokenizer, pairs: list[Pair], max_length: int, batch_size: int = 32) -> list[float]:
    """P(answerable) per pair with the model as it is now."""
    import torch

    was_training = model.training
    model.eval()
    out: list[float] = []
    with (
        torch.inference_mode(),
        torch.autocast(tensors_device(model), dtype=torch.bfloat16, enabled=auto_float_dtype() == "bfloat16"),
    ):
        for i in range(0, len(pairs), batch_size):
            logits = model(**_encode(tokenizer, pairs[i : i + batch_size], max_length)).logits[:, 0]
            out += torch.sigmoid(logits.float()).tolist()
    model.train(was_training)
    return out


def validation_report(pairs: list[Pair], probs: list[float]) -> dict:
    """AUROC of 1 - p as a refusal score, and the minimax threshold, on the validation pairs."""
    scored = [Scored(p.label == 0, False, 1.0 - pr, 0.0, 0.0, p.kind) for p, pr in zip(pairs, probs, strict=True)]
    return {"pairs": len(pairs), **threshold_report(scored)}


def trainable_state(model) -> dict:
    return {n: p.detach().to(CPU).clone() for n, p in model.named_parameters() if p.requires_grad}


def save_verifier(model, folder: Path, cfg: VerifierConfig, base_path: Path, validation: dict | None) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.to(torch.float16).contiguous() for n, t in trainable_state(model).items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    threshold = None if validation is None else validation.get("threshold")
    VerifierMeta(FORMAT, describe_base_model(base_path), cfg.max_length, threshold, validation).write(folder)


def bce_loss(model, inputs: dict, global_step: int):
    """The verifier's loss for the trainer: BCE of the one logit against the 0/1 label."""
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    logits = model(**inputs).logits[:, 0]
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return loss, {}


def _features(tokenizer, pairs: list[Pair], max_length: int) -> list[dict]:
    """Each pair tokenised once (no padding: the collator pads a batch; the sampler groups by length)."""
    enc = tokenizer(
        [p.question for p in pairs], [p.passage for p in pairs], truncation="only_second", max_length=max_length
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": float(p.label)} for i, p in enumerate(pairs)]


def train_verifier(
    cfg: VerifierConfig, corpus: Corpus, base_path: Path, resume: bool = True, progress: bool = True
) -> dict:
    """Train, validate on the held-out articles, write the verifier folder; returns the summary."""
    import torch

    apply_thread_settings(cfg.torch_threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_articles, val_articles = split_articles(corpus, cfg.val_articles, cfg.seed)
    train_pairs = build_pairs(corpus.subset(train_articles), cfg, "train")
    if cfg.limit_pairs:
        train_pairs = train_pairs[: cfg.limit_pairs]
    val_pairs = [p for p in build_pairs(corpus.subset(val_articles), cfg, "val") if p.kind in _KINDS_VAL]
    val_pairs = val_pairs[: cfg.val_limit] if cfg.val_limit else val_pairs
    if not train_pairs:
        raise InvalidInputError("no training pairs: the train side of the split has no questions")

    from transformers import DataCollatorWithPadding

    from candor.finetune import trainer as tr

    tokenizer, model = load_classifier(base_path)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    per_epoch = math.ceil(len(train_pairs) / cfg.batch_size)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(per_epoch * cfg.num_train_epochs)

    # what a checkpoint's batch position means: resuming under other settings would train other batches
    plan = {"seed": cfg.seed, "batch_size": cfg.batch_size, "pairs": len(train_pairs), "max_length": cfg.max_length}
    ckdir = out / "checkpoints"
    ckpt = tr.last_checkpoint(ckdir) if resume else None
    if ckpt is not None:
        saved_plan = json.loads((out / "plan.json").read_text()) if (out / "plan.json").exists() else None
        if saved_plan is not None and saved_plan != plan:
            raise InvalidInputError(
                f"{ckpt} was made with {saved_plan}, this run has {plan}: start over with --fresh "
                "or restore the settings"
            )
        log.info("resuming from %s", ckpt)
    else:  # a fresh start: no old checkpoint to resume later
        shutil.rmtree(ckdir, ignore_errors=True)
    (out / "plan.json").write_text(json.dumps(plan) + "\n", encoding="utf-8")
    budget = tr.TimeBudget(cfg.time_budget_minutes, tr.spent_before(ckpt))
    facts = tr.RunFacts(budget)
    knobs = {"per_device_train_batch_size": cfg.batch_size, "max_steps": max_steps, "save_total_limit": 1}
    knobs.update(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, seed=cfg.seed, max_grad_norm=1.0)
    knobs.update(logging_steps=cfg.logging_steps, save_steps=cfg.save_steps or max_steps)
    # score_pairs and the service run the verifier on the CPU; bf16 autocast where this CPU runs it fast
    knobs.update(use_cpu=True, bf16=auto_float_dtype() == "bfloat16", include_num_input_tokens_seen="no")
    trainer = tr.CandorTrainer(
        model=model,
        args=tr.training_arguments(ckdir, **knobs),
        train_dataset=_features(tokenizer, train_pairs, cfg.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[budget, tr.JsonlLog(out / "train_log.jsonl", budget), facts],
        loss_fn=bce_loss,
        budget=budget,
        schedule="linear",
        warmup=int(cfg.warmup_ratio * max_steps),
    )
    tr.run(trainer, ckpt, progress)
    steps, train_seconds = facts.facts["steps"], facts.facts["train_time_s"]
    validation = None
    if val_pairs:
        validation = validation_report(val_pairs, score_pairs(model, tokenizer, val_pairs, cfg.max_length))
    save_verifier(model, out / "verifier", cfg, base_path, validation)
    summary = {
        "config": asdict(cfg),
        "base_model": describe_base_model(base_path),
        "train": pair_stats(train_pairs),
        "val_articles": sorted(val_articles),
        "steps": steps,
        "stop_reason": facts.facts["stop_reason"],
        "train_seconds": train_seconds,
        "pairs_per_second": round(steps * cfg.batch_size / max(train_seconds, 1e-9), 2),
        "peak_rss_mb": facts.facts["peak_rss_mb"],
        "compute_dtype": auto_float_dtype(),
        "validation": validation,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


# Validation measures the oracle question: each question with its own paragraph.
_KINDS_VAL = ("answerable", "unanswerable")
