"""Build the refusal/QA training set from SQuAD-2.0-style data.

Why five categories: SQuAD's own unanswerable questions teach *when* to refuse
(they are written to look answerable from their paragraph); the derived ones
teach that the answer must come from the passages (retrieval miss: the same
question refused once its gold paragraph is gone; missing context; a false
premise that the context contradicts). Examples are rendered with the service's
own prompt (``candor.prompts.build_messages``), so training sees what serving
sends. Articles, never paragraphs, are split between train and validation;
the validation articles' raw questions are written out too, because the refusal
threshold is chosen on them (never on dev). Deterministic for a seed.

Evidence (``BuildConfig.evidence``, issue 18): served prompts may carry the
answerability reader's evidence line (``CANDOR_PROMPT_EVIDENCE``). With a mode
other than ``none`` every example with passages carries the line a served
request would, rendered by ``candor.prompts.evidence_text``: the gold answer's
span for answerable and false-premise examples (the reader finds it; a false
premise still refuses), a deterministic pseudo-span (``pseudo_span``) for
SQuAD's near-misses and retrieval misses (the reader always marks its best
span, so the line alone must not make a question answerable), none without
passages. The line is added after sampling and dedupe and draws no random
numbers, so ``evidence: none`` writes exactly what it wrote before.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from candor.errors import InvalidInputError
from candor.finetune.answer_spans import LocateStats, locate_answer
from candor.finetune.squad import Corpus, Paragraph, Question
from candor.jsonl import write_jsonl
from candor.prompts import (
    EVIDENCE_MODES,
    REFUSAL_SENTENCE,
    ContextChunk,
    build_messages,
    evidence_text,
    normalize_text,
)

CATEGORIES = ("answerable", "unanswerable", "retrieval_miss", "no_context", "false_premise")


@dataclass
class BuildConfig:
    seed: int = 13
    val_articles: int = 3
    size: int = 8000  # training examples (before dedupe); a category short of material is capped
    val_size: int = 400  # chat examples from the validation articles, for validation loss
    ratios: dict[str, float] = field(
        default_factory=lambda: {
            "answerable": 0.42,
            "unanswerable": 0.36,
            "retrieval_miss": 0.10,
            "no_context": 0.04,
            "false_premise": 0.08,
        }
    )
    distractor_weights: list[float] = field(default_factory=lambda: [0.65, 0.3, 0.05])  # P(k = 0, 1, 2)
    same_article_distractor_p: float = 0.7  # like retrieval, distractors mostly come from the same page
    evidence: str = "none"  # the prompt's evidence line: none | sentence | span (as CANDOR_PROMPT_EVIDENCE)

    def __post_init__(self) -> None:
        if self.evidence not in EVIDENCE_MODES:
            raise InvalidInputError(f"evidence must be one of {list(EVIDENCE_MODES)}, not {self.evidence!r}")
        unknown = set(self.ratios) - set(CATEGORIES)
        if unknown:
            raise InvalidInputError(f"unknown categories in ratios: {sorted(unknown)}; known: {CATEGORIES}")
        if any(v < 0 for v in self.ratios.values()) or sum(self.ratios.values()) <= 0:
            raise InvalidInputError("ratios must be non-negative and not all zero")
        if not self.distractor_weights or any(w < 0 for w in self.distractor_weights):
            raise InvalidInputError("distractor_weights must be a non-empty list of non-negative weights")


@dataclass
class Example:
    id: str
    category: str
    question_id: str
    question: str
    article: str
    doc_ids: list[str]
    gold_in_context: bool
    answer: str
    messages: list[dict[str, str]]

    def to_json(self) -> dict:
        return self.__dict__.copy()


def split_articles(corpus: Corpus, n_val: int, seed: int) -> tuple[set[str], set[str]]:
    """Hold out ``n_val`` whole articles: no paragraph is ever on both sides."""
    articles = corpus.articles()
    if n_val < 0 or n_val >= len(articles):
        raise InvalidInputError(f"val_articles={n_val} must be between 0 and {len(articles) - 1}")
    rng = random.Random(f"split:{seed}")
    shuffled = sorted(articles)
    rng.shuffle(shuffled)
    return set(shuffled[n_val:]), set(shuffled[:n_val])


def _contains_any(text: str, answers: tuple[str, ...]) -> bool:
    norm = f" {normalize_text(text)} "
    return any(f" {normalize_text(a)} " in norm for a in answers if normalize_text(a))


_CAP_SPAN = re.compile(r"(?<!^)(?<![.?!] )\b([A-Z][a-z]+(?: (?:of |de |the )?[A-Z][a-z]+)*)\b")
_NUMBER = re.compile(r"\b(\d{3,4})\b")


class _Sampler:
    """Draws distractors and false-premise swaps from one side of the split."""

    def __init__(self, corpus: Corpus, cfg: BuildConfig, rng: random.Random):
        self.corpus, self.cfg, self.rng = corpus, cfg, rng
        self.by_article: dict[str, list[Paragraph]] = {}
        for p in sorted(corpus.paragraphs.values(), key=lambda p: p.doc_id):
            self.by_article.setdefault(p.article, []).append(p)
        self.all_paras = sorted(corpus.paragraphs.values(), key=lambda p: p.doc_id)
        self.entities: list[str] = sorted(
            {m for q in corpus.questions for m in _CAP_SPAN.findall(q.question) if len(m) > 3}
        )

    def distractors(self, gold: Paragraph, k: int, avoid: tuple[str, ...] = ()) -> list[Paragraph]:
        chosen: list[Paragraph] = []
        for _ in range(k * 6):
            if len(chosen) == k:
                break
            same = self.by_article.get(gold.article, [])
            pool = same if (self.rng.random() < self.cfg.same_article_distractor_p and len(same) > 1) else None
            cand = self.rng.choice(pool or self.all_paras)
            if cand.doc_id == gold.doc_id or cand in chosen or (avoid and _contains_any(cand.text, avoid)):
                continue
            chosen.append(cand)
        return chosen

    def n_distractors(self) -> int:
        w = self.cfg.distractor_weights
        return self.rng.choices(range(len(w)), weights=w)[0]

    def false_premise(self, q: Question, context: str) -> str | None:
        """Swap one entity or year of the question for one the context does not hold."""
        ctx = context.lower()
        spans = [m for m in _CAP_SPAN.findall(q.question) if m.lower() in ctx and len(m) > 3]
        nums = [m for m in _NUMBER.findall(q.question) if m in context]
        options: list[tuple[str, str]] = []
        for span in spans:
            for _ in range(8):
                new = self.rng.choice(self.entities) if self.entities else None
                if new and new.lower() not in ctx and new != span:
                    options.append((span, new))
                    break
        for num in nums:
            for _ in range(8):
                new = str(int(num) + self.rng.choice([-1, 1]) * self.rng.randint(3, 60))
                if new not in context:
                    options.append((num, new))
                    break
        if not options:
            return None
        old, new = self.rng.choice(options)
        return re.sub(rf"\b{re.escape(old)}\b", new, q.question, count=1)


def _chunks(paras: list[Paragraph]) -> list[ContextChunk]:
    return [ContextChunk(p.text, p.title) for p in paras]


def _make(category: str, q: Question, question: str, paras: list[Paragraph], gold_in: bool, answer: str) -> Example:
    return Example(
        id=f"{category}:{q.id}",
        category=category,
        question_id=q.id,
        question=question,
        article=q.doc_id.split("#")[0],
        doc_ids=[p.doc_id for p in paras],
        gold_in_context=gold_in,
        answer=answer,
        messages=build_messages(question, _chunks(paras), answer=answer),
    )


def _example(category: str, q: Question, corpus: Corpus, s: _Sampler) -> Example | None:
    gold = corpus.paragraphs[q.doc_id]
    if category in ("answerable", "unanswerable"):
        paras = [gold, *s.distractors(gold, s.n_distractors())]
        s.rng.shuffle(paras)
        answer = q.answers[0] if category == "answerable" else REFUSAL_SENTENCE
        return _make(category, q, q.question, paras, True, answer)
    if category == "retrieval_miss":
        paras = s.distractors(gold, max(1, s.n_distractors()), avoid=q.answers)
        if not paras:
            return None
        return _make(category, q, q.question, paras, False, REFUSAL_SENTENCE)
    if category == "no_context":
        return _make(category, q, q.question, [], False, REFUSAL_SENTENCE)
    if category == "false_premise":
        swapped = s.false_premise(q, gold.text)
        if swapped is None:
            return None
        paras = [gold, *s.distractors(gold, s.n_distractors())]
        s.rng.shuffle(paras)
        return _make(category, q, swapped, paras, True, REFUSAL_SENTENCE)
    raise InvalidInputError(f"unknown category {category!r}")


_STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "had", "has", "have",
     "how", "in", "is", "it", "its", "of", "on", "or", "the", "to", "was", "were", "what", "when", "where",
     "which", "who", "whom", "whose", "why", "with"}
)  # fmt: skip
_WORD = re.compile(r"\S+")
_PSEUDO_MAX_WORDS = 8


def _content_words(text: str) -> set[str]:
    return {w for w in normalize_text(text).split() if w not in _STOPWORDS}


def pseudo_span(question: str, passage: str) -> tuple[int, int] | None:
    """A deterministic stand-in for the span a reader marks when the passage does not answer.

    Deliberately simple: take the passage's sentence sharing the most content words with the question
    (the first on a tie), then the longest run of words in it that share none with the question, at most
    8 words (the first on a tie; the whole sentence when no word is new). Reader-like: a short phrase
    beside the question's own words. Returns character offsets [start, end) or None for an empty passage.
    """
    qwords = _content_words(question)
    sentences = [(m.start(), m.end()) for m in re.finditer(r"[^.!?]+(?:[.!?]+|$)", passage) if m.group().strip()]
    if not sentences:
        return None
    best = max(sentences, key=lambda se: (len(qwords & _content_words(passage[se[0] : se[1]])), -se[0]))
    words = [(m.start() + best[0], m.end() + best[0]) for m in _WORD.finditer(passage[best[0] : best[1]])]
    run: list[tuple[int, int]] = []
    longest: list[tuple[int, int]] = []
    for start, end in words:
        if _content_words(passage[start:end]) & qwords:
            run = []
            continue
        run.append((start, end))
        if len(run) > len(longest) and len(run) <= _PSEUDO_MAX_WORDS:
            longest = list(run)
    if not longest:
        longest = words
    start, end = longest[0][0], longest[-1][1]
    while end > start and passage[end - 1] in ".,;:!?":
        end -= 1
    return (start, end) if end > start else None


@dataclass
class EvidenceStats:
    with_evidence: int = 0  # examples whose prompt carries the evidence line
    offsets: LocateStats = field(default_factory=LocateStats)  # gold spans: given, located, missed (no line)


def _evidence_line(ex: Example, q: Question, corpus: Corpus, mode: str, stats: EvidenceStats) -> str | None:
    """The evidence line a served request would carry for ``ex`` (None: none)."""
    if not ex.doc_ids:
        return None  # no passages: no reader, no line
    if ex.category in ("answerable", "false_premise"):
        gold = corpus.paragraphs[q.doc_id]
        found = locate_answer(q, gold.text, stats.offsets)
        if found is None:
            return None
        text, start = found
        return evidence_text(mode, gold.text, start, start + len(text))
    # near-miss: the gold paragraph; retrieval miss: the first passage shown
    passage = corpus.paragraphs[q.doc_id if ex.category == "unanswerable" else ex.doc_ids[0]].text
    span = pseudo_span(q.question, passage)
    return None if span is None else evidence_text(mode, passage, *span)


def build_examples(corpus: Corpus, cfg: BuildConfig, size: int, salt: str) -> tuple[list[Example], dict]:
    """Mix categories by ``cfg.ratios`` from one side of the split; dedupe; shuffle."""
    rng = random.Random(f"{salt}:{cfg.seed}")
    sampler = _Sampler(corpus, cfg, rng)
    answerable = [q for q in corpus.questions if not q.is_impossible]
    impossible = [q for q in corpus.questions if q.is_impossible]
    total = sum(cfg.ratios.values())
    out: list[Example] = []
    seen: set[str] = set()
    stats: dict[str, dict] = {}
    for category in CATEGORIES:
        want = round(size * cfg.ratios.get(category, 0.0) / total)
        pool = list(impossible if category == "unanswerable" else answerable)
        rng.shuffle(pool)
        made = dupes = skipped = 0
        ev = EvidenceStats()
        for q in pool:
            if made >= want:
                break
            ex = _example(category, q, corpus, sampler)
            if ex is None:
                skipped += 1
                continue
            key = hashlib.sha1(
                json.dumps([normalize_text(ex.question), sorted(ex.doc_ids), ex.answer]).encode()
            ).hexdigest()
            if key in seen:
                dupes += 1
                continue
            seen.add(key)
            if cfg.evidence != "none":
                line = _evidence_line(ex, q, corpus, cfg.evidence, ev)
                if line is not None:
                    paras = [corpus.paragraphs[d] for d in ex.doc_ids]
                    ex.messages = build_messages(ex.question, _chunks(paras), answer=ex.answer, evidence=line)
                    ev.with_evidence += 1
            out.append(ex)
            made += 1
        stats[category] = {"requested": want, "made": made, "duplicates_dropped": dupes, "not_possible": skipped}
        stats[category]["with_evidence"] = ev.with_evidence
        if cfg.evidence != "none" and category in ("answerable", "false_premise"):
            stats[category]["offsets"] = asdict(ev.offsets)
    rng.shuffle(out)
    return out, stats


def build_dataset(corpus: Corpus, cfg: BuildConfig, out_dir: Path) -> dict:
    """Write train.jsonl, val.jsonl, val.{questions,paragraphs}.jsonl and stats.json into ``out_dir``."""
    train_articles, val_articles = split_articles(corpus, cfg.val_articles, cfg.seed)
    train_c, val_c = corpus.subset(train_articles), corpus.subset(val_articles)
    train, train_stats = build_examples(train_c, cfg, cfg.size, "train")
    val, val_stats = build_examples(val_c, cfg, cfg.val_size, "val") if val_articles else ([], {})
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "train.jsonl", [e.to_json() for e in train], sort_keys=False)
    write_jsonl(out_dir / "val.jsonl", [e.to_json() for e in val], sort_keys=False)
    write_jsonl(
        out_dir / "val.questions.jsonl",
        [
            {
                "id": q.id,
                "doc_id": q.doc_id,
                "question": q.question,
                "answers": list(q.answers),
                "is_impossible": q.is_impossible,
            }
            for q in val_c.questions
        ],
        sort_keys=False,
    )
    write_jsonl(
        out_dir / "val.paragraphs.jsonl",
        [{"doc_id": p.doc_id, "title": p.title, "text": p.text} for p in val_c.paragraphs.values()],
        sort_keys=False,
    )
    stats = {
        "seed": cfg.seed,
        "evidence": cfg.evidence,
        "train_articles": sorted(train_articles),
        "val_articles": sorted(val_articles),
        "train": {
            "examples": len(train),
            "per_category": train_stats,
            "counts": dict(Counter(e.category for e in train)),
        },
        "val": {
            "examples": len(val),
            "per_category": val_stats,
            "questions": len(val_c.questions),
            "counts": dict(Counter(e.category for e in val)),
        },
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats
