"""The answerability reader alone, in oracle mode: SQuAD 2.0's own measures beside Candor's.

Each question gets its own paragraph (and, as extra categories, another
paragraph of its article: a retrieval miss; or nothing: no context). The
reader gives P(answerable) and its best span; the refusal confidence is
1 - P, exactly as the service applies it. Reported: SQuAD 2.0 EM/F1 overall,
HasAns and NoAns at the reader's validation threshold (a refusal is the empty
answer), and Candor's decision metrics with bootstrap intervals and the curve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from candor.data_source import resolve_data_source, split_path
from candor.errors import InvalidInputError
from candor.finetune.evaluate import EvalItem, oracle_items, sample_questions
from candor.finetune.metrics import Scored, exact_match, summarize, token_f1
from candor.finetune.report import json_safe
from candor.finetune.squad import load_squad
from candor.prompts import ContextChunk
from candor.reader import Evidence, PassageReader
from candor.refusal_score import refusal_confidence
from candor.service.refusal_policy import retrieval_gate


def best_evidence(reader: PassageReader, question: str, passages: Sequence[str]) -> Evidence | None:
    """The passage the question is most answerable from (None with no passage)."""
    if not passages:
        return None
    return max(reader.read(question, passages), key=lambda ev: ev.answerable)


def score_item(item: EvalItem, ev: Evidence | None, retrieval_scores: Sequence[float] | None = None) -> Scored:
    """The item's refusal confidence as the service computes it: 1 - P, raised by a weak best retrieval match
    when the retrieval scores are given (``candor.refusal_score.refusal_confidence``)."""
    p = 0.0 if ev is None else ev.answerable
    span = "" if ev is None else ev.text
    em = exact_match(span, item.answers) if item.answers and not item.should_refuse else 0.0
    f1 = token_f1(span, item.answers) if item.answers and not item.should_refuse else 0.0
    conf = refusal_confidence(None, retrieval_scores, p)
    return Scored(item.should_refuse, False, 1.0 - p if conf is None else conf, em, f1, item.category)


def squad2_scores(items: Sequence[Scored], threshold: float | None) -> dict:
    """SQuAD 2.0's EM/F1: a refusal is the empty answer, right exactly when there is no answer."""

    def em_f1(x: Scored) -> tuple[float, float]:
        refused = x.refused(threshold)
        if x.should_refuse:
            return float(refused), float(refused)
        return (0.0, 0.0) if refused else (x.em, x.f1)

    def mean(xs: list[Scored]) -> dict:
        pairs = [em_f1(x) for x in xs]
        n = max(1, len(pairs))
        return {"n": len(pairs), "em": sum(e for e, _ in pairs) / n, "f1": sum(f for _, f in pairs) / n}

    squad = [x for x in items if x.category in ("answerable", "unanswerable")]
    return {
        "all": mean(squad),
        "has_ans": mean([x for x in squad if not x.should_refuse]),
        "no_ans": mean([x for x in squad if x.should_refuse]),
    }


RAG_CATEGORIES = ("answerable", "unanswerable", "answerable_retrieval_miss", "unanswerable_retrieval_miss")


def rag_reader_items(
    retriever, questions, collection: str, k: int, min_retrieval_score: float
) -> tuple[list[EvalItem], list[list[float]]]:
    """Each question with what retrieval gives it, as the service reads it (no generation).

    The passages are the top k the collection returns; when the retrieval gate would refuse (nothing at or
    above ``min_retrieval_score``) the reader gets no passage, so P(answerable) is 0 as the service's
    refusal is. The question should be refused when it is unanswerable or retrieval missed its gold
    paragraph (the same rule as ``candor eval --mode rag``).
    """

    items, scores = [], []
    for q in questions:
        hits = retriever.retrieve(q.question, collection, k)
        scores.append([float(h.score) for h in hits])
        gold = q.doc_id in {h.doc_id for h in hits}
        passes = retrieval_gate([float(h.score) for h in hits], min_retrieval_score).passed
        chunks = [ContextChunk(h.text, h.title) for h in hits] if passes else []
        cat = ("unanswerable" if q.is_impossible else "answerable") + ("" if gold else "_retrieval_miss")
        items.append(EvalItem(q.id, cat, q.question, chunks, list(q.answers), q.is_impossible or not gold))
    return items, scores


def evaluate_reader(
    reader: PassageReader,
    items: Sequence[EvalItem],
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
    headline: Sequence[str] = ("answerable", "unanswerable"),
    retrieval_scores: Sequence[Sequence[float]] | None = None,
) -> dict:
    """Score every item with the reader; metrics at ``threshold`` (default: the reader's own).

    ``headline``: the categories the decision metrics cover (oracle: SQuAD's own questions, the derived
    ones apart; RAG: every question, retrieval misses included). ``retrieval_scores`` (RAG, one list per
    item): the confidence is the served one, 1 - P raised by a weak best retrieval match.
    """
    threshold = reader.threshold if threshold is None else threshold
    t0 = time.monotonic()
    scored: list[Scored] = []
    for i, item in enumerate(items):
        ev = best_evidence(reader, item.question, [c.text for c in item.chunks])
        scored.append(score_item(item, ev, None if retrieval_scores is None else retrieval_scores[i]))
        if progress is not None:
            progress(1)
    wall = time.monotonic() - t0
    # headline figures over the data's own questions; derived categories (retrieval_miss, no_context) apart
    own = [x for x in scored if x.category in headline]
    extra = sorted({x.category for x in scored} - set(headline))
    return {
        "threshold": threshold,
        "squad2": squad2_scores(scored, threshold),
        "decision": summarize(own, threshold),
        "extra_categories": {
            cat: {"n": len(xs), "refused_rate": sum(x.refused(threshold) for x in xs) / len(xs)}
            for cat in extra
            for xs in [[x for x in scored if x.category == cat]]
        },
        "seconds": round(wall, 1),
        "ms_per_item": round(1000 * wall / max(1, len(items)), 1),
    }


def markdown(report: dict) -> str:
    """A short human-readable page for ``reports/``."""
    d, s, extra = report["decision"], report["squad2"], report["extra_categories"]
    ci = d.get("ci95", {})

    def pct(key: str) -> str:
        lo_hi = ci.get(key)
        tail = f" [{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]" if lo_hi else ""
        return f"{100 * d[key]:.1f}{tail}"

    lines = [
        f"# The answerability reader alone ({report.get('split', '')})",
        "",
        f"Reader: `{report.get('reader', '')}`; threshold on 1 - P(answerable): {report['threshold']}; "
        f"{d['n']} items, {report['ms_per_item']} ms an item.",
        "",
        "| SQuAD 2.0 | n | EM | F1 |",
        "|---|---|---|---|",
        *[f"| {k} | {v['n']} | {100 * v['em']:.1f} | {100 * v['f1']:.1f} |" for k, v in s.items()],
        "",
        "| decision | value |",
        "|---|---|",
        f"| AUROC | {d['auroc']:.3f} [{ci.get('auroc', [float('nan')] * 2)[0]:.3f}, "
        f"{ci.get('auroc', [float('nan')] * 2)[1]:.3f}] |",
        f"| hallucination % | {pct('hallucination_rate')} |",
        f"| over-refusal % | {pct('over_refusal')} |",
        f"| answered-F1 (the evidence span) | {pct('answered_f1')} |",
        f"| F1_RG | {pct('f1_rg')} |",
        f"| curve area | {d['curve_area']:.3f} |",
        "",
        "| category | n | refused % |",
        "|---|---|---|",
        *[f"| {k} | {v['n']} | {100 * v['refused_rate']:.1f} |" for k, v in d["per_category"].items()],
        *[f"| {k} (derived) | {v['n']} | {100 * v['refused_rate']:.1f} |" for k, v in extra.items()],
    ]
    return "\n".join(lines) + "\n"


def write_reader_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")


def run_reader_eval(
    settings,
    ev: dict,
    reader: PassageReader,
    *,
    mode: str = "oracle",
    split: str = "dev",
    source=None,
    limit: int = 0,
    threshold: float | None = None,
    collection: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """``candor finetune eval-reader``: the reader alone, oracle (each question with its own paragraph) or RAG
    (what the collection retrieves for it, as the service reads it; no generation, so all of dev is cheap).

    ``ev``: params.yaml's eval section (seed, extra categories, the RAG collection and what it also ingests).
    """
    if mode not in ("oracle", "rag"):
        raise InvalidInputError(f"unknown reader eval mode {mode!r} (oracle, rag)")
    src = resolve_data_source(source or ev.get("source"), settings)
    corpus = load_squad(split_path(src, split), split)
    seed = int(ev.get("seed", 13))
    config: dict = {"mode": mode, "split": split, "source": str(src), "limit": limit}
    if mode == "oracle":
        items = oracle_items(
            corpus,
            limit=limit,
            seed=seed,
            extra_categories=ev.get("extra_categories", []) or [],
            extra_limit=int(ev.get("extra_limit", 100)),
        )
        report = evaluate_reader(reader, items, threshold, progress)
    else:
        from candor.finetune.rag import ensure_collection
        from candor.ingest.retriever import Retriever

        rag = ev.get("rag", {}) or {}
        collection = collection or rag.get("collection", "squad-eval")
        also = [load_squad(split_path(src, s), s) for s in rag.get("also_ingest", ["train"]) if s != split]
        ensure_collection(settings, collection, [corpus, *also])
        k = int(rag.get("top_k", settings.top_k))
        questions = sample_questions(corpus.questions, limit, seed)
        items, scores = rag_reader_items(Retriever(settings), questions, collection, k, settings.min_retrieval_score)
        report = evaluate_reader(reader, items, threshold, progress, headline=RAG_CATEGORIES, retrieval_scores=scores)
        config.update({"collection": collection, "top_k": k, "min_retrieval_score": settings.min_retrieval_score})
        config["should_refuse"] = "unanswerable, or answerable whose gold paragraph retrieval missed"
    report["config"] = config
    report["reader"] = getattr(reader, "version", "")
    report["split"] = f"{split}, {mode}" + (" (retrieved passages, no generation)" if mode == "rag" else "")
    return report
