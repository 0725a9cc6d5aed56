"""Flags → training pairs and the regression set.

Each screened flag is rebuilt into the chat prompt the model saw: the logged
question, the history turns the prompt kept and the context passages exactly
as they went into the prompt (``contexts[*].text`` of the export, which is the
chunk's ``prompt_text``), rendered with ``candor.prompts.build_messages``: the
one template that serving, training and evaluation share. The assistant turn
is what the model should have said:

| verdict | correction | pair |
|---|---|---|
| hallucination | none, or one the context does not support | refusal |
| hallucination | supported by the context | QA (the correction) |
| should_have_refused | (ignored) | refusal |
| wrong_refusal | supported by the context | QA (the correction) |
| wrong_refusal | none, or unsupported | none: the refusal stands, or we do not know the answer |
| correct | | none (it goes to the regression set only) |

"Supported" is ``candor.retrain.support.correction_support`` (normalised
substring, else content-word recall with every number present). A correction
that is itself a refusal sentence counts as no correction.

The regression set holds every screened flag's prompt with the behaviour now
expected (refuse, or answer, with a reference text when known), so the gate
can check the new adapter fixed what users flagged without breaking what they
confirmed. Pure Python.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from candor.prompts import PROMPT_VERSION, REFUSAL_SENTENCE, ContextChunk, build_messages, is_refusal, normalize_text
from candor.retrain.support import Support, correction_support

REFUSAL_PAIR = "feedback_refusal"
QA_PAIR = "feedback_qa"


@dataclass(frozen=True)
class FlagTarget:
    """What one flag asks of the model for its prompt."""

    expect: str  # "refuse" | "answer"
    reference: str | None  # the answer expected (correction, or the confirmed answer), if known
    pair: str | None  # REFUSAL_PAIR | QA_PAIR | None (regression only)
    reason: str
    support: Support | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        """Comparable form for duplicate and conflict detection."""
        return (self.expect, normalize_text(self.reference) if self.reference else None)


def context_texts(row: dict[str, Any]) -> list[str]:
    return [c.get("text") or "" for c in row.get("contexts") or []]


def flag_target(row: dict[str, Any], min_recall: float) -> FlagTarget:
    """Apply the table in the module doc to one export row."""
    verdict = row["verdict"]
    correction = (row.get("correction") or "").strip()
    if correction and is_refusal(correction):
        correction = ""
    support = correction_support(correction, context_texts(row), min_recall) if correction else None
    if verdict == "should_have_refused":
        return FlagTarget("refuse", None, REFUSAL_PAIR, "should_have_refused")
    if verdict == "hallucination":
        if support is not None and support.supported:
            return FlagTarget("answer", correction, QA_PAIR, "hallucination_supported_correction", support)
        reason = "hallucination_unsupported_correction" if correction else "hallucination"
        return FlagTarget("refuse", None, REFUSAL_PAIR, reason, support)
    if verdict == "wrong_refusal":
        if support is not None and support.supported:
            return FlagTarget("answer", correction, QA_PAIR, "wrong_refusal_supported_correction", support)
        if correction:
            return FlagTarget("refuse", None, None, "wrong_refusal_unsupported_correction", support)
        return FlagTarget("answer", None, None, "wrong_refusal_without_correction")
    if verdict == "correct":
        if row.get("refused"):
            return FlagTarget("refuse", None, None, "confirmed_refusal")
        return FlagTarget("answer", row.get("answer") or None, None, "confirmed_answer")
    raise ValueError(f"unknown verdict {verdict!r}")


def prompt_messages(row: dict[str, Any], answer: str | None = None) -> list[dict[str, str]]:
    """The chat messages of the logged prompt (plus the assistant turn, for a pair)."""
    chunks = [ContextChunk(c.get("text") or "", c.get("title")) for c in row.get("contexts") or []]
    history = [{"role": t["role"], "content": t["content"]} for t in row.get("history") or []]
    return build_messages(row["question"], chunks, history, answer=answer)


def make_pair(row: dict[str, Any], target: FlagTarget) -> dict[str, Any]:
    """A training row in the fine-tuning builder's format (``messages`` + metadata)."""
    answer = REFUSAL_SENTENCE if target.pair == REFUSAL_PAIR else (target.reference or "")
    return {
        "id": f"feedback:{row['flag_id']}",
        "category": target.pair,
        "question_id": row["flag_id"],
        "question": row["question"],
        "article": row.get("collection") or "",
        "doc_ids": [c.get("doc_id") for c in row.get("contexts") or []],
        "gold_in_context": target.pair == QA_PAIR,
        "answer": answer,
        "messages": prompt_messages(row, answer),
        "flag_id": row["flag_id"],
        "verdict": row["verdict"],
        "reason": target.reason,
    }


def make_regression_item(row: dict[str, Any], target: FlagTarget) -> dict[str, Any]:
    return {
        "flag_id": row["flag_id"],
        "question": row["question"],
        "history": row.get("history") or [],
        "contexts": [{"text": c.get("text") or "", "title": c.get("title")} for c in row.get("contexts") or []],
        "expect": target.expect,
        "reference": target.reference,
        "verdict": row["verdict"],
        "reason": target.reason,
        "trained": target.pair is not None,
        "flagged_answer": row.get("answer"),
        "flagged_adapter": row.get("adapter"),
        "flagged_adapter_version": row.get("adapter_version"),
    }


@dataclass
class PairsResult:
    pairs: list[dict[str, Any]]
    regression: list[dict[str, Any]]
    stats: dict[str, Any]


def build_pairs(rows: Sequence[dict[str, Any]], min_recall: float = 0.8) -> PairsResult:
    """Pairs and regression items for screened flag rows, in flag-id order."""
    pairs, regression, reasons, supports = [], [], Counter(), Counter()
    other_version = 0
    for row in sorted(rows, key=lambda r: r["flag_id"]):
        target = flag_target(row, min_recall)
        reasons[target.reason] += 1
        if target.support is not None:
            supports[target.support.how] += 1
        if row.get("prompt_version") not in (None, PROMPT_VERSION):
            other_version += 1  # rebuilt with today's template: what the model will be asked from now on
        if target.pair is not None:
            pairs.append(make_pair(row, target))
        regression.append(make_regression_item(row, target))
    stats = {
        "flags": len(rows),
        "pairs": len(pairs),
        "refusal_pairs": sum(p["category"] == REFUSAL_PAIR for p in pairs),
        "qa_pairs": sum(p["category"] == QA_PAIR for p in pairs),
        "regression_items": len(regression),
        "by_verdict": dict(sorted(Counter(r["verdict"] for r in rows).items())),
        "by_reason": dict(sorted(reasons.items())),
        "correction_support": dict(sorted(supports.items())),
        "prompt_version": PROMPT_VERSION,
        "rebuilt_from_other_prompt_version": other_version,
        "flag_ids": [p["flag_id"] for p in pairs],
    }
    return PairsResult(pairs, regression, stats)
