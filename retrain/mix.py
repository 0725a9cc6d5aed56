"""The ``prepare`` stage: feedback pairs mixed into fresh base data.

Training on a handful of flags alone would teach the adapter to refuse
everything that looks like them (and forget the rest), so most of each
retraining set is the fine-tuning builder's own data (``candor.finetune.dataset``,
same categories and ratios as ``params.yaml build_data``), drawn from the
training articles only (the validation articles hold the frozen eval set).

Sizes: every feedback pair appears ``r`` times (upsampling: a few flags must
still move the weights), ``r = max_repeats`` lowered until the base share fits
``max_base_examples``; base rows = ``pairs * r * (1 - f) / f`` for the
``feedback_fraction`` f, clamped to ``[min_base_examples, max_base_examples]``.
Base questions equal to a flagged question are left out, so no base row
contradicts a feedback pair. Deterministic for the seed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from candor.errors import InvalidInputError
from candor.finetune.dataset import build_examples, split_articles
from candor.finetune.params import build_config
from candor.finetune.squad import load_squad
from candor.prompts import normalize_text
from candor.retrain.loop_params import MixParams, squad_source


def plan_sizes(n_pairs: int, mix: MixParams) -> tuple[int, int]:
    """(repeats per pair, base rows) for ``n_pairs`` feedback pairs."""
    if n_pairs <= 0:
        raise InvalidInputError("no feedback pairs to train on (every flag was screened out or gives no pair)")
    ratio = (1 - mix.feedback_fraction) / mix.feedback_fraction
    r = mix.max_repeats
    while r > 1 and n_pairs * r * ratio > mix.max_base_examples:
        r -= 1
    n_base = round(n_pairs * r * ratio)
    return r, min(max(n_base, mix.min_base_examples), mix.max_base_examples)


def base_examples(params: dict[str, Any], n: int, exclude_questions: set[str], seed: int) -> list[dict[str, Any]]:
    """``n`` examples from the fine-tuning builder over the training articles (not the validation ones)."""
    if n <= 0:
        return []
    source, split = squad_source(params)
    corpus = load_squad(source, split)
    cfg = build_config(params)
    train_articles, _ = split_articles(corpus, cfg.val_articles, cfg.seed)
    pool = corpus.subset(train_articles)
    pool.questions = [q for q in pool.questions if normalize_text(q.question) not in exclude_questions]
    # a little slack: a category short of material is capped by the builder
    examples, _ = build_examples(pool, cfg, n + max(8, n // 10), salt=f"loop:{seed}")
    return [e.to_json() for e in examples[:n]]


def mix_rows(
    pairs: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], repeats: int, seed: int
) -> list[dict[str, Any]]:
    rows = [dict(b, source="base") for b in base]
    for p in pairs:
        for i in range(repeats):
            rows.append(dict(p, id=f"{p['id']}#{i}", source="feedback"))
    random.Random(f"mix:{seed}").shuffle(rows)
    return rows


def prepare(params: dict[str, Any], pairs: Sequence[dict[str, Any]], mix: MixParams) -> tuple[list[dict], dict]:
    """The mixed training rows and their stats."""
    repeats, n_base = plan_sizes(len(pairs), mix)
    flagged = {normalize_text(p["question"]) for p in pairs}
    base = base_examples(params, n_base, flagged, mix.seed)
    if len(base) < min(n_base, mix.min_base_examples):
        raise InvalidInputError(f"the base data gave only {len(base)} examples, {n_base} wanted")
    rows = mix_rows(pairs, base, repeats, mix.seed)
    n_fb = len(pairs) * repeats
    stats = {
        "pairs": len(pairs),
        "repeats": repeats,
        "feedback_rows": n_fb,
        "base_rows": len(base),
        "rows": len(rows),
        "feedback_fraction": round(n_fb / len(rows), 4) if rows else 0.0,
        "feedback_fraction_wanted": mix.feedback_fraction,
        "base_categories": dict(sorted(Counter(b["category"] for b in base).items())),
        "feedback_categories": dict(sorted(Counter(p["category"] for p in pairs).items())),
    }
    return rows, stats
