"""The answerability reader alone, in oracle mode: SQuAD 2.0's own measures beside Candor's.

Each question gets its own paragraph (and, as extra categories, another
paragraph of its article: a retrieval miss; or nothing: no context). The
reader gives P(answerable) and its best span; the refusal confidence is
1 - P, exactly as the service applies it. Reported: SQuAD 2.0 EM/F1 overall,
HasAns and NoAns at the reader's validation threshold (a refusal is the empty
answer), and Candor's decision metrics with bootstrap intervals and the curve.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from candor.finetune.evaluate import EvalItem
from candor.finetune.metrics import Scored, exact_match, summarize, token_f1
from candor.reader import Evidence


class PassageReader(Protocol):
    @property
    def threshold(self) -> float | None: ...

    def read(self, question: str, passages: Sequence[str]) -> list[Evidence]: ...


def best_evidence(reader: PassageReader, question: str, passages: Sequence[str]) -> Evidence | None:
    """The passage the question is most answerable from (None with no passage)."""
    if not passages:
        return None
    return max(reader.read(question, passages), key=lambda ev: ev.answerable)


def score_item(item: EvalItem, ev: Evidence | None) -> Scored:
    p = 0.0 if ev is None else ev.answerable
    span = "" if ev is None else ev.text
    em = exact_match(span, item.answers) if item.answers and not item.should_refuse else 0.0
    f1 = token_f1(span, item.answers) if item.answers and not item.should_refuse else 0.0
    return Scored(item.should_refuse, False, 1.0 - p, em, f1, item.category)


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


def evaluate_reader(
    reader: PassageReader,
    items: Sequence[EvalItem],
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Score every item with the reader; metrics at ``threshold`` (default: the reader's own)."""
    threshold = reader.threshold if threshold is None else threshold
    t0 = time.monotonic()
    scored: list[Scored] = []
    for item in items:
        ev = best_evidence(reader, item.question, [c.text for c in item.chunks])
        scored.append(score_item(item, ev))
        if progress is not None:
            progress(1)
    wall = time.monotonic() - t0
    return {
        "threshold": threshold,
        "squad2": squad2_scores(scored, threshold),
        "decision": summarize(scored, threshold),
        "seconds": round(wall, 1),
        "ms_per_item": round(1000 * wall / max(1, len(items)), 1),
    }
