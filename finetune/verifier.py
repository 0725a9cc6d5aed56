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
length-grouped batches, bf16 autocast where the CPU runs bf16 fast (else float32). Checkpoints (trainable tensors,
optimizer, step, RNG) every ``save_steps``; ``resume`` continues the newest.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from candor.answerability import FORMAT, WEIGHTS_FILE, VerifierMeta, describe_base_model, load_classifier
from candor.errors import InvalidInputError
from candor.finetune.dataset import split_articles
from candor.finetune.metrics import Scored, auroc, choose_threshold
from candor.finetune.squad import Corpus, Question
from candor.hardware import auto_float_dtype
from candor.settings import apply_thread_settings

log = logging.getLogger("candor.finetune.verifier")

KINDS = ("answerable", "unanswerable", "retrieval_miss", "answer_removed")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass
class VerifierConfig:
    output_dir: str = "var/finetune/verifier"
    seed: int = 13
    val_articles: int = 3  # the dataset builder's split (same seed → same articles)
    miss_ratio: float = 0.2  # retrieval_miss pairs per answerable question
    removed_ratio: float = 0.3  # answer_removed pairs per answerable question
    max_length: int = 320
    batch_size: int = 16
    learning_rate: float = 8e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    num_train_epochs: float = 2.0
    max_steps: int = -1
    time_budget_minutes: float = 0.0  # 0 = none; the schedule then decays over the budget
    save_steps: int = 100
    logging_steps: int = 25
    torch_threads: int = 1
    limit_pairs: int = 0  # 0 = all (tests use a handful)
    val_limit: int = 600

    def __post_init__(self) -> None:
        for name in ("miss_ratio", "removed_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"verifier {name} must be between 0 and 1")
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


def _batches(pairs: list[Pair], size: int, rng: random.Random) -> list[list[Pair]]:
    """Length-grouped: sort within windows of 50 batches, then shuffle the batches."""
    order = list(pairs)
    rng.shuffle(order)
    out = []
    window = size * 50
    for i in range(0, len(order), window):
        chunk = sorted(order[i : i + window], key=lambda p: len(p.question) + len(p.passage))
        out += [chunk[j : j + size] for j in range(0, len(chunk), size)]
    rng.shuffle(out)
    return out


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
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=auto_float_dtype() == "bfloat16"):
        for i in range(0, len(pairs), batch_size):
            logits = model(**_encode(tokenizer, pairs[i : i + batch_size], max_length)).logits[:, 0]
            out += torch.sigmoid(logits.float()).tolist()
    model.train(was_training)
    return out


def validation_report(pairs: list[Pair], probs: list[float]) -> dict:
    """AUROC of 1 - p as a refusal score, and the minimax threshold, on the validation pairs."""
    scored = [Scored(p.label == 0, False, 1.0 - pr, 0.0, 0.0, p.kind) for p, pr in zip(pairs, probs, strict=True)]
    threshold, point = choose_threshold(scored, "minimax")
    return {
        "pairs": len(pairs),
        "auroc": round(auroc(scored), 4),
        "threshold": threshold,
        "hallucination_rate": round(point.get("hallucination_rate", 0.0), 4),
        "over_refusal": round(point.get("over_refusal", 0.0), 4),
    }


def trainable_state(model) -> dict:
    return {n: p.detach().to("cpu").clone() for n, p in model.named_parameters() if p.requires_grad}


def save_verifier(model, folder: Path, cfg: VerifierConfig, base_path: Path, validation: dict | None) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.to(torch.float16).contiguous() for n, t in trainable_state(model).items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    threshold = None if validation is None else validation.get("threshold")
    VerifierMeta(FORMAT, describe_base_model(base_path), cfg.max_length, threshold, validation).write(folder)


def _latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("step-*.pt"))
    return found[-1] if found else None


def _save_checkpoint(out: Path, model, optimizer, state: dict) -> None:
    import torch

    ckdir = out / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    tmp = ckdir / ".tmp.pt"
    payload = {
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "state": state,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    torch.save(payload, tmp)
    tmp.rename(ckdir / f"step-{state['step']:06d}.pt")
    for old in sorted(ckdir.glob("step-*.pt"))[:-1]:
        old.unlink()


def train_verifier(
    cfg: VerifierConfig, corpus: Corpus, base_path: Path, resume: bool = True, progress: bool = True
) -> dict:
    """Train, validate on the held-out articles, write the verifier folder; returns the summary."""
    import torch
    from tqdm import tqdm

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

    tokenizer, model = load_classifier(base_path)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(train_pairs) / cfg.batch_size)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(per_epoch * cfg.num_train_epochs)
    budget_s = cfg.time_budget_minutes * 60

    # what a checkpoint's batch position means: resuming under other settings would train other batches
    plan = {"seed": cfg.seed, "batch_size": cfg.batch_size, "pairs": len(train_pairs), "max_length": cfg.max_length}
    state = {"step": 0, "epoch": 0, "batch": 0, "elapsed": 0.0, "plan": plan}
    ckpt = _latest_checkpoint(out) if resume else None
    if ckpt is not None:
        payload = torch.load(ckpt, weights_only=False)
        saved_plan = payload["state"].get("plan")
        if saved_plan is not None and saved_plan != plan:
            raise InvalidInputError(
                f"{ckpt} was made with {saved_plan}, this run has {plan}: start over with --fresh "
                "or restore the settings"
            )
        model.load_state_dict(payload["trainable"], strict=False)
        optimizer.load_state_dict(payload["optimizer"])
        state = payload["state"]
        random.setstate(payload["rng"]["python"])
        torch.set_rng_state(payload["rng"]["torch"])
        log.info("resumed from %s (step %d)", ckpt.name, state["step"])
    else:  # a fresh start: no old checkpoint to resume later, no old log lines
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "train_log.jsonl").unlink(missing_ok=True)

    def lr_at(step: int, elapsed: float) -> float:
        progress_ = max(step / max_steps, elapsed / budget_s if budget_s else 0.0)
        warm = max(1, int(cfg.warmup_ratio * max_steps))
        return cfg.learning_rate * min(1.0, (step + 1) / warm) * max(0.0, 1.0 - progress_)

    loss_fn = torch.nn.BCEWithLogitsLoss()
    log_path = out / "train_log.jsonl"
    started = time.monotonic() - state["elapsed"]
    stop_reason = "max_steps"
    model.train()
    bar = tqdm(total=max_steps, initial=state["step"], disable=not progress, desc="verifier")
    with log_path.open("a", encoding="utf-8") as logf:
        while state["step"] < max_steps:
            # the epoch's batch order is a function of (seed, epoch): a resumed run skips what it did
            batches = _batches(train_pairs, cfg.batch_size, random.Random(f"{cfg.seed}:epoch:{state['epoch']}"))
            while state["batch"] < len(batches) and state["step"] < max_steps:
                batch = batches[state["batch"]]
                elapsed = time.monotonic() - started
                if budget_s and elapsed >= budget_s:
                    stop_reason = "time_budget"
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(state["step"], elapsed)
                enc = _encode(tokenizer, batch, cfg.max_length)
                labels = torch.tensor([float(p.label) for p in batch])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=auto_float_dtype() == "bfloat16"):
                    logits = model(**enc).logits[:, 0]
                loss = loss_fn(logits.float(), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["batch"] += 1
                state["elapsed"] = time.monotonic() - started
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if state["step"] % cfg.logging_steps == 0:
                    row = {"step": state["step"], "loss": round(loss.item(), 4), "lr": group["lr"]}
                    logf.write(json.dumps({**row, "elapsed_s": round(state["elapsed"], 1)}) + "\n")
                    logf.flush()
                if cfg.save_steps and state["step"] % cfg.save_steps == 0:
                    _save_checkpoint(out, model, optimizer, state)
            if stop_reason == "time_budget":
                break
            if state["batch"] >= len(batches):
                state["epoch"] += 1
                state["batch"] = 0
    bar.close()
    if not cfg.save_steps or state["step"] % cfg.save_steps:
        # the end is a checkpoint too: running again resumes here and rewrites the same verifier
        _save_checkpoint(out, model, optimizer, state)
    train_seconds = time.monotonic() - started
    validation = None
    if val_pairs:
        validation = validation_report(val_pairs, score_pairs(model, tokenizer, val_pairs, cfg.max_length))
    save_verifier(model, out / "verifier", cfg, base_path, validation)
    summary = {
        "config": asdict(cfg),
        "base_model": describe_base_model(base_path),
        "train": pair_stats(train_pairs),
        "val_articles": sorted(val_articles),
        "steps": state["step"],
        "stop_reason": stop_reason,
        "train_seconds": round(train_seconds, 1),
        "pairs_per_second": round(state["step"] * cfg.batch_size / max(train_seconds, 1e-9), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "compute_dtype": auto_float_dtype(),
        "validation": validation,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


# Validation measures the oracle question: each question with its own paragraph.
_KINDS_VAL = ("answerable", "unanswerable")
