"""Train the answerability reader (``candor finetune train-reader``), top to bottom.

1. Data: every source's questions (``finetune.reader_data``: answerable with a
   located span, SQuAD's unanswerables, retrieval misses, answers removed).
   The first source's validation articles (the dataset builder's split, same
   seed) are held out to choose the threshold; dev is never read here.
2. Features: the standard SQuAD 2.0 preprocessing: question + passage windows
   of ``max_length`` tokens overlapping by ``doc_stride``; a window that does
   not hold the whole answer, and every unanswerable one, points at [CLS].
3. Model: the embedding encoder (all-MiniLM-L6-v2) with transformers' span
   head; its word embeddings stay frozen (half the weights: the shipped folder
   holds only what changed).
4. Loop: ``transformers.Trainer``: dynamic padding, length-grouped batches,
   linear warmup and decay over the epochs, checkpoints every ``save_steps``
   and resume from the newest. Candor adds one callback (``candor.finetune.trainer.TimeBudget``,
   shared with the adapter's and the verifier's trainer): a per-invocation time budget that saves
   and stops, so a run longer than a sitting goes on later.
5. Validation: P(answerable) per validation example (``candor.reader``), the
   AUROC of 1 - P, the minimax threshold, and SQuAD 2.0 EM/F1 (HasAns/NoAns).
"""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from candor.answerability import WEIGHTS_FILE as VERIFIER_WEIGHTS
from candor.errors import InvalidInputError
from candor.finetune.dataset import split_articles
from candor.finetune.encoder_run import EncoderRunConfig, threshold_report
from candor.finetune.metrics import Scored, exact_match, token_f1
from candor.finetune.reader_data import ReaderExample, build_reader_examples
from candor.finetune.squad import Corpus, load_squad
from candor.jsonl import json_objects
from candor.reader import FORMAT, WEIGHTS_FILE, ReaderMeta, best_spans, encode, load_qa_model, load_trained_tensors

log = logging.getLogger("candor.finetune.reader")


@dataclass
class ReaderConfig(EncoderRunConfig):
    output_dir: str = "var/finetune/reader"
    sources: list[str] = field(default_factory=list)  # "PATH" (SQuAD v2 .json) or "PATH:SPLIT" (JSONL folder)
    doc_stride: int = 128
    max_answer_len: int = 30
    warmup_steps: int = 50
    time_budget_minutes: float = 0.0  # per invocation; 0 = none. The run saves, stops, and resumes next time
    init_from: str | None = None  # a verifier folder: its trained encoder layers seed the reader's
    init_from_reader: str | None = None  # a reader folder: continue from its tensors (encoder and span head)
    extra_examples: str | None = None  # a JSONL of ReaderExample rows added to training (the loop's flag labels)
    extra_repeats: int = 1  # each extra example this many times (a handful of labels among the replay rows)
    limit_examples: int = 0  # 0 = all (tests use a handful)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.doc_stride >= self.max_length // 2 or self.max_length < 64:
            raise InvalidInputError("reader max_length must be >= 64 and doc_stride less than half of it")
        if self.extra_repeats < 1:
            raise InvalidInputError("reader extra_repeats must be at least 1")
        if self.init_from and self.init_from_reader:
            raise InvalidInputError("reader: init_from (a verifier) and init_from_reader exclude each other")


def read_extra_examples(path: Path) -> list[ReaderExample]:
    """Reader examples from a JSONL file (``ReaderExample.to_row`` rows), each span checked against its passage."""
    out = []
    fields = set(ReaderExample.__dataclass_fields__)
    for n, row in json_objects(Path(path)):
        missing = sorted(fields - set(row))
        if missing:
            raise InvalidInputError(f"{path}:{n}: a reader example lacks {missing}")
        ex = ReaderExample(**{k: row[k] for k in fields})
        if ex.answerable and ex.context[ex.answer_start : ex.answer_start + len(ex.answer_text)] != ex.answer_text:
            raise InvalidInputError(f"{path}:{n}: answer_text is not at answer_start in its context")
        out.append(ex)
    return out


def parse_source(spec: str) -> tuple[Path, str | None]:
    """``PATH:SPLIT`` for a JSONL folder, ``PATH`` for an official .json file."""
    path, _, split = spec.rpartition(":") if ":" in spec and not spec.endswith(".json") else (spec, "", "")
    return Path(path), (split or None)


def load_examples(cfg: ReaderConfig) -> tuple[list[ReaderExample], list[ReaderExample], dict]:

    if not cfg.sources:
        raise InvalidInputError("reader training needs at least one data source")
    train: list[ReaderExample] = []
    val: list[ReaderExample] = []
    stats: dict = {"sources": {}}
    for i, spec in enumerate(cfg.sources):
        path, split = parse_source(spec)
        corpus = load_squad(path, split)
        if i == 0:
            tr_articles, val_articles = split_articles(corpus, cfg.val_articles, cfg.seed)
            val_corpus: Corpus = corpus.subset(val_articles)
            corpus = corpus.subset(tr_articles)
            val, val_stats = build_reader_examples(val_corpus, cfg.seed, cfg.miss_ratio, cfg.removed_ratio, "val")
            stats["validation"] = {"articles": sorted(val_articles), **val_stats}
        rows, s = build_reader_examples(corpus, cfg.seed, cfg.miss_ratio, cfg.removed_ratio, f"train{i}")
        stats["sources"][spec] = s
        train += rows
    if cfg.limit_examples:
        train = train[: cfg.limit_examples]
    if cfg.val_limit:
        val = val[: cfg.val_limit]
    if cfg.extra_examples:
        extra = read_extra_examples(Path(cfg.extra_examples))
        stats["extra"] = {
            "file": cfg.extra_examples,
            "examples": len(extra),
            "answerable": sum(e.answerable for e in extra),
            "repeats": cfg.extra_repeats,
            "replay_examples": len(train),
        }
        train = train + extra * cfg.extra_repeats
        random.Random(f"reader:extra:{cfg.seed}").shuffle(train)
    stats["train_examples"] = len(train)
    return train, val, stats


def features(tokenizer, examples: list[ReaderExample], cfg: ReaderConfig) -> list[dict]:
    """The SQuAD 2.0 training features: token start/end of the answer, or [CLS] (0, 0)."""
    out: list[dict] = []
    step = 256
    for i in range(0, len(examples), step):
        batch = examples[i : i + step]
        enc = encode(tokenizer, [e.question for e in batch], [e.context for e in batch], cfg.max_length, cfg.doc_stride)
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            ex = batch[sample]
            seq = enc.sequence_ids(w)
            offsets = enc["offset_mapping"][w]
            start_tok = end_tok = 0
            if ex.answerable:
                a0, a1 = ex.answer_start, ex.answer_start + len(ex.answer_text)
                ctx = [k for k, s in enumerate(seq) if s == 1]
                if offsets[ctx[0]][0] <= a0 and offsets[ctx[-1]][1] >= a1:
                    start_tok = next(k for k in ctx if offsets[k][1] > a0)
                    end_tok = next(k for k in reversed(ctx) if offsets[k][0] < a1)
            row = {k: enc[k][w] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            row.update(start_positions=start_tok, end_positions=end_tok, length=len(row["input_ids"]))
            out.append(row)
    return out


def score_examples(model, tokenizer, examples: list[ReaderExample], cfg: ReaderConfig, batch: int = 32) -> list:
    """The reader's Evidence for each example's own passage, with the model as it is now."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            enc = encode(
                tokenizer,
                [e.question for e in chunk],
                [e.context for e in chunk],
                cfg.max_length,
                cfg.doc_stride,
                padding=True,
            )
            inputs = {k: torch.tensor(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            res = model(**inputs)
            out += best_spans(
                res.start_logits.numpy(),
                res.end_logits.numpy(),
                enc,
                len(chunk),
                cfg.max_answer_len,
                [e.context for e in chunk],
            )
    model.train(was_training)
    return out


def validation_report(examples: list[ReaderExample], evidence: list) -> dict:
    """AUROC of 1 - P(answerable), the minimax threshold, SQuAD 2.0 EM/F1 at that threshold."""

    golds = [[e.answer_text] if e.answerable else [] for e in examples]
    scored = [
        Scored(
            not e.answerable,
            False,
            1.0 - ev.answerable,
            exact_match(ev.text, g) if g else 0.0,
            token_f1(ev.text, g) if g else 0.0,
            e.kind,
        )
        for e, ev, g in zip(examples, evidence, golds, strict=True)
    ]
    return {
        "examples": len(examples),
        **threshold_report(scored),
        "span_em_answerable": round(
            sum(s.em for s in scored if not s.should_refuse) / max(1, sum(not s.should_refuse for s in scored)), 4
        ),
        "span_f1_answerable": round(
            sum(s.f1 for s in scored if not s.should_refuse) / max(1, sum(not s.should_refuse for s in scored)), 4
        ),
    }


def save_reader(
    model, folder: Path, cfg: ReaderConfig, base_model: str, validation: dict | None, training: dict
) -> None:
    """The tensors training changed, in float16, and ``reader.json``."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    tensors = {n: t.detach().to(torch.float16).contiguous() for n, t in model.state_dict().items() if n not in frozen}
    tensors = {n: t for n, t in tensors.items() if "position_ids" not in n}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    threshold = None if validation is None else validation.get("threshold")
    ReaderMeta(
        FORMAT, base_model, cfg.max_length, cfg.doc_stride, cfg.max_answer_len, threshold, validation, training
    ).write(folder)


def seed_encoder(model, verifier_dir: Path) -> int:
    """Copy a verifier's trained encoder layers into the reader (its head and pooler are not a span head)."""
    from safetensors.torch import load_file

    path = verifier_dir / VERIFIER_WEIGHTS
    if not path.exists():
        raise InvalidInputError(f"init_from: no {VERIFIER_WEIGHTS} in {verifier_dir}")
    state = {k: v.float() for k, v in load_file(str(path)).items() if ".encoder." in k or ".embeddings." in k}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise InvalidInputError(f"init_from: {verifier_dir} does not fit this encoder: {result.unexpected_keys[:3]}")
    log.info("reader encoder seeded from %s (%d tensors)", verifier_dir, len(state))
    return len(state)


def train_reader(cfg: ReaderConfig, base_path: Path, base_model: str, resume: bool = True) -> dict:
    """Train (or continue) a reader run under ``cfg.output_dir``; returns the run summary."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer

    from candor.finetune.trainer import TimeBudget, last_checkpoint, training_arguments

    torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, data_stats = load_examples(cfg)
    tokenizer, model = load_qa_model(base_path)
    model.get_input_embeddings().weight.requires_grad_(False)
    if cfg.init_from:
        seed_encoder(model, Path(cfg.init_from))
    if cfg.init_from_reader:  # continue from a trained reader: its encoder layers and span head
        src = Path(cfg.init_from_reader)
        head = ("qa_outputs.weight", "qa_outputs.bias")
        load_trained_tensors(model, src / WEIGHTS_FILE, base_path, ReaderMeta.read(src).base_model, head)
        log.info("reader starts from %s", src)
    feats = features(tokenizer, train, cfg)
    data_stats["train_features"] = len(feats)
    (out / "data_stats.json").write_text(json.dumps(data_stats, indent=1) + "\n", encoding="utf-8")
    log.info("reader data: %d examples -> %d features", len(train), len(feats))
    knobs = {"per_device_train_batch_size": cfg.batch_size, "lr_scheduler_type": "linear", "save_total_limit": 2}
    for name in ("learning_rate", "weight_decay", "warmup_steps", "num_train_epochs", "max_steps", "seed"):
        knobs[name] = getattr(cfg, name)
    knobs.update(logging_steps=cfg.logging_steps, save_steps=cfg.save_steps)
    # the span model's own loss; the collator's extra "length" column is dropped before its forward
    knobs.update(use_cpu=True, remove_unused_columns=True, include_num_input_tokens_seen="no")
    args = training_arguments(out / "checkpoints", **knobs)
    budget = TimeBudget(cfg.time_budget_minutes)  # per invocation: the next one resumes
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=feats,  # a list of dicts is a map-style dataset
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[budget],
    )
    ckpt = last_checkpoint(out / "checkpoints") if resume else None
    t0 = time.monotonic()
    result = trainer.train(resume_from_checkpoint=ckpt)
    wall = time.monotonic() - t0
    state = trainer.state
    finished = state.global_step >= state.max_steps and not budget.stopped_early
    summary = {
        "resumed_from": ckpt,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": round(state.epoch or 0.0, 4),
        "finished": finished,
        "wall_s_this_invocation": round(wall, 1),
        "features_per_s": round(result.metrics.get("train_samples_per_second", 0.0), 3),
        "train_loss": round(result.training_loss, 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "torch_threads": cfg.torch_threads,
        "config": asdict(cfg),
        "data": data_stats,
    }
    if not budget.stopped_early:
        evidence = score_examples(model, tokenizer, val, cfg)
        summary["validation"] = validation_report(val, evidence)
        save_reader(
            model,
            out / "final",
            cfg,
            base_model,
            summary["validation"],
            {k: summary[k] for k in ("global_step", "epoch", "features_per_s", "train_loss", "peak_rss_gb")},
        )
    history = (
        [*json.loads((out / "summary.json").read_text())["invocations"]] if (out / "summary.json").exists() else []
    )
    (out / "summary.json").write_text(
        json.dumps({"invocations": [*history, summary]}, indent=1) + "\n", encoding="utf-8"
    )
    return summary
