"""Flags → labels for the answerability reader, on the exact passages that were shown.

A flag is first of all a label for the refusal *decision*: does this passage answer this question? The
screened flags (``poisoning.py``: approved only, per-key caps, duplicates and conflicts dropped, the same
rows the pairs are built from) become reader examples (``candor.finetune.reader_data.ReaderExample``) on
the passages as the model saw them (the export's ``contexts[*].text``, the chunk's ``prompt_text``). The
target is the pairs builder's (``pairs.flag_target``), so the generator and the reader learn the same
lesson from one flag:

- refuse (should_have_refused; hallucination without a supported correction; a confirmed refusal):
  every shown passage is labelled "no answer";
- answer, with a reference (a supported correction; a confirmed answer): the passage(s) holding the
  reference verbatim (or without "The answer is" wrapping) are labelled answerable, with its span;
- answer, reference not found: the reader's logged evidence span in its best passage, when one was logged;
- answer, no reference and no logged span: no label (nothing to point at); regression only.

Passages of an answerable flag that hold no span are left unlabelled: another passage may answer too.
Every screened flag also becomes a regression item: the question, its passages and retrieval scores, and
the decision now expected (refuse or answer), which the gate checks both readers against. Pure Python.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from candor.finetune.reader_data import ReaderExample
from candor.retrain.pairs import FlagTarget, context_texts, flag_target

KIND_REFUSE = "flag_no_answer"
KIND_ANSWER = "flag_answerable"
_WRAPPING = re.compile(r"^\s*(the answer is|answer:|it is|it's)\s+", re.IGNORECASE)


@dataclass
class ReaderLabels:
    examples: list[ReaderExample]
    regression: list[dict[str, Any]]
    stats: dict[str, Any]


def _variants(reference: str) -> list[str]:
    """The reference as written, then without "The answer is"-style wrapping and the final full stop."""
    out = [reference.strip()]
    bare = _WRAPPING.sub("", reference.strip()).rstrip(" .!")
    if bare and bare not in out:
        out.append(bare)
    return [v for v in out if v]


def find_span(reference: str, passage: str) -> tuple[str, int] | None:
    """The reference's text and character offset in ``passage`` (exact, then case-insensitive), or None."""
    low = passage.lower()
    for text in _variants(reference):
        start = passage.find(text)
        if start < 0:
            start = low.find(text.lower())
        if start >= 0:
            return passage[start : start + len(text)], start
    return None


def logged_span(row: dict[str, Any]) -> tuple[int, str, int] | None:
    """The reader's evidence span as logged on the best passage shown: (passage index, text, start)."""
    best: tuple[float, int, int, int] | None = None
    for i, c in enumerate(row.get("contexts") or []):
        s, e, p = c.get("evidence_start"), c.get("evidence_end"), c.get("answerable")
        text = c.get("text") or ""
        if s is None or e is None or p is None or not 0 <= s < e <= len(text):
            continue
        if best is None or p > best[0]:
            best = (p, i, s, e)
    if best is None:
        return None
    _, i, s, e = best
    return i, (row["contexts"][i].get("text") or "")[s:e], s


def _example(row: dict[str, Any], i: int, passage: str, span: tuple[str, int] | None, kind: str) -> ReaderExample:
    text, start = span if span is not None else ("", -1)
    return ReaderExample(
        f"flag:{row['flag_id']}:{i}", row["question"], passage, text, start, kind, row.get("collection") or ""
    )


def labels_for(row: dict[str, Any], target: FlagTarget) -> tuple[list[ReaderExample], str]:
    """One flag's reader examples and how they were made (a reason for the stats)."""
    passages = context_texts(row)
    if not passages:
        return [], "no_passages"
    if target.expect == "refuse":
        return [_example(row, i, p, None, KIND_REFUSE) for i, p in enumerate(passages)], "no_answer"
    if target.reference:
        found = [(i, p, find_span(target.reference, p)) for i, p in enumerate(passages)]
        hits = [_example(row, i, p, span, KIND_ANSWER) for i, p, span in found if span is not None]
        if hits:
            return hits, "answer_span_found"
    logged = logged_span(row)
    if logged is not None:
        i, text, start = logged
        return [_example(row, i, passages[i], (text, start), KIND_ANSWER)], "logged_evidence_span"
    return [], "answerable_without_span"


def regression_item(row: dict[str, Any], target: FlagTarget, trained: bool) -> dict[str, Any]:
    contexts = row.get("contexts") or []
    return {
        "flag_id": row["flag_id"],
        "question": row["question"],
        "collection": row.get("collection"),
        "passages": context_texts(row),
        "scores": [c.get("score") for c in contexts],
        "expect": target.expect,
        "verdict": row["verdict"],
        "trained": trained,
        "flagged_refused": row.get("refused"),
        "flagged_reader": row.get("answerability_model"),
        "flagged_threshold": row.get("answerability_threshold"),
    }


def build_reader_labels(rows: Sequence[dict[str, Any]], min_recall: float = 0.8) -> ReaderLabels:
    """Labels and regression items for screened flag rows, in flag-id order."""
    examples: list[ReaderExample] = []
    regression: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    labelled: list[str] = []
    for row in sorted(rows, key=lambda r: r["flag_id"]):
        target = flag_target(row, min_recall)
        got, reason = labels_for(row, target)
        reasons[reason] += 1
        examples += got
        if got:
            labelled.append(row["flag_id"])
        regression.append(regression_item(row, target, bool(got)))
    stats = {
        "flags": len(rows),
        "labelled_flags": len(labelled),
        "examples": len(examples),
        "no_answer": sum(not e.answerable for e in examples),
        "answerable": sum(e.answerable for e in examples),
        "by_reason": dict(sorted(reasons.items())),
        "by_verdict": dict(sorted(Counter(r["verdict"] for r in rows).items())),
        "regression_items": len(regression),
        "flag_ids": labelled,
    }
    return ReaderLabels(examples, regression, stats)
