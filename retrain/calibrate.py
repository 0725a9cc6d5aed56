"""A collection's own refusal threshold, from its reviewed flags (``candor calibrate --collection NAME``).

A threshold chosen on Wikipedia validation (the reader's own) is a guess for a collection of product
documents. Reviewed flags on the collection say, question by question, whether its documents answer it
(``wrong_refusal``, ``correct`` on an answer: answer; ``should_have_refused``, ``hallucination``, ``correct``
on a refusal: refuse; the pairs builder's ``flag_target``). The flags go through the loop's poisoning
screen first (approved only: untrusted keys' flags after review; per-key caps; duplicates; conflicts
dropped). The *current* reader reads the passages each question was shown (the log's prompt texts, so a
reader promoted since is measured, not the one that answered), every decision as the service makes it
(1 - max P(answerable), raised by a weak best retrieval match), and the threshold that minimises the
larger of the two error rates (over-refusal, hallucination) on those flags is chosen; ties go to the
smaller sum, then to the reader's validation threshold. The trade-off table (both rates at each
threshold tried) is printed and stored with the choice (table ``collection_thresholds``), beside the
figures of the threshold it replaces.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from candor.decision import READER, decide
from candor.errors import InvalidInputError
from candor.feedback.thresholds import CollectionThreshold
from candor.reader import PassageReader
from candor.refusal_score import refusal_confidence
from candor.retrain.loop_params import PoisoningParams
from candor.retrain.pairs import context_texts, flag_target
from candor.retrain.poisoning import screen_flags


@dataclass(frozen=True)
class Case:
    """One flagged question: what is expected, and the refusal confidence the current reader gives it."""

    flag_id: str
    should_refuse: bool
    confidence: float


def rates(cases: Sequence[Case], threshold: float | None) -> dict[str, Any]:
    """Over-refusal and hallucination rate of ``cases`` decided at ``threshold``."""
    ans = [c for c in cases if not c.should_refuse]
    ref = [c for c in cases if c.should_refuse]
    refused = {c.flag_id: decide(c.confidence, threshold, layer=READER) is not None for c in cases}
    over = sum(refused[c.flag_id] for c in ans)
    hall = sum(not refused[c.flag_id] for c in ref)
    return {
        "threshold": None if threshold is None else round(threshold, 4),
        "over_refusal": round(over / len(ans), 4) if ans else 0.0,
        "hallucination_rate": round(hall / len(ref), 4) if ref else 0.0,
        "over_refused": over,
        "hallucinated": hall,
    }


def candidates(cases: Sequence[Case]) -> list[float]:
    """Thresholds worth trying: midway between neighbouring confidences, and just past both ends."""
    conf = sorted({round(c.confidence, 6) for c in cases})
    mids = [(a + b) / 2 for a, b in zip(conf, conf[1:], strict=False)]
    return sorted({0.0, *mids, min(1.0, conf[-1] + 1e-6)}) if conf else [0.5]


def choose(cases: Sequence[Case], validation: float | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The minimax threshold on ``cases`` and the whole trade-off table."""
    table = [rates(cases, t) for t in candidates(cases)]
    ref = validation if validation is not None else 0.5

    def key(r: dict[str, Any]) -> tuple[float, float, float]:
        worst = max(r["over_refusal"], r["hallucination_rate"])
        return (worst, r["over_refusal"] + r["hallucination_rate"], abs(r["threshold"] - ref))

    return min(table, key=key), table


def cases_from_flags(rows: Sequence[dict[str, Any]], reader: PassageReader, min_recall: float) -> list[Case]:
    """One case per screened flag whose question reached the reader (passages were shown)."""
    out = []
    for row in rows:
        passages = context_texts(row)
        if not passages:
            continue  # the retrieval gate refused: no threshold of the reader's was involved
        target = flag_target(row, min_recall)
        p = max(ev.answerable for ev in reader.read(row["question"], passages))
        scores = [c["score"] for c in row.get("contexts") or [] if c.get("score") is not None]
        confidence = refusal_confidence(None, scores, p)
        out.append(Case(row["flag_id"], target.expect == "refuse", float(confidence)))
    return out


@dataclass
class Calibration:
    collection: str
    model: str
    threshold: float
    chosen: dict[str, Any]  # rates at the chosen threshold on the calibration flags
    before: dict[str, Any]  # rates at the threshold served until now
    table: list[dict[str, Any]]
    flags: int
    screening: dict[str, Any]
    target: float

    @property
    def meets_target(self) -> bool:
        return max(self.chosen["over_refusal"], self.chosen["hallucination_rate"]) <= self.target + 1e-12

    @property
    def miss(self) -> float:
        return round(max(0.0, max(self.chosen["over_refusal"], self.chosen["hallucination_rate"]) - self.target), 4)

    def record(self, source: str, who: str | None) -> CollectionThreshold:
        return CollectionThreshold(
            self.collection,
            READER,
            self.model,
            self.threshold,
            source,
            self.flags,
            self.chosen["over_refusal"],
            self.chosen["hallucination_rate"],
            {
                "before": self.before,
                "target": self.target,
                "meets_target": self.meets_target,
                "trade_off": self.table,
                "screening": {k: self.screening.get(k) for k in ("input", "kept", "dropped_by_reason", "conflicts")},
            },
            datetime.now(UTC),
            who,
        )

    def lines(self) -> list[str]:
        c, b = self.chosen, self.before
        out = [
            f"collection {self.collection}: {self.flags} reviewed flag(s) after screening, reader {self.model}",
            f"  before: threshold {b['threshold']}: over-refusal {b['over_refusal']:.3f}, "
            f"hallucination {b['hallucination_rate']:.3f}",
            f"  chosen: threshold {c['threshold']}: over-refusal {c['over_refusal']:.3f} "
            f"({c['over_refused']} refused that should be answered), hallucination {c['hallucination_rate']:.3f} "
            f"({c['hallucinated']} answered that should be refused)",
        ]
        if self.meets_target:
            out.append(f"  both at or under the target {self.target:.2f}")
        else:
            out.append(f"  misses the target {self.target:.2f} by {self.miss:.3f} (the larger of the two rates)")
        out.append("  trade-off (threshold: over-refusal / hallucination):")
        step = max(1, len(self.table) // 8)
        for r in self.table[::step]:
            out.append(f"    {r['threshold']:.4f}: {r['over_refusal']:.3f} / {r['hallucination_rate']:.3f}")
        return out


def calibrate(
    rows: Sequence[dict[str, Any]],
    collection: str,
    reader: PassageReader,
    served: float | None,
    *,
    min_flags: int,
    target: float,
    poisoning: PoisoningParams | None = None,
    min_recall: float = 0.8,
) -> Calibration:
    """Screen the collection's flags, score them with ``reader``, choose its threshold."""
    screened = screen_flags([r for r in rows if r.get("collection") == collection], poisoning or PoisoningParams())
    cases = cases_from_flags(screened.kept, reader, min_recall)
    n_ref = sum(c.should_refuse for c in cases)
    if len(cases) < min_flags or n_ref == 0 or n_ref == len(cases):
        raise InvalidInputError(
            f"collection {collection!r} has {len(cases)} usable reviewed flag(s) ({n_ref} asking for a refusal, "
            f"{len(cases) - n_ref} for an answer); calibrating needs at least {min_flags}, with both kinds "
            "(approve flags with `candor feedback review`)"
        )
    chosen, table = choose(cases, served)
    return Calibration(
        collection,
        reader.version,
        float(chosen["threshold"]),
        chosen,
        rates(cases, served),
        table,
        len(cases),
        screened.report(),
        target,
    )


def question_set_rates(
    questions: Path,
    collection: str,
    retrieve: Callable[[str, str], list[Any]],
    reader: PassageReader,
    threshold: float | None,
    min_retrieval_score: float,
) -> dict[str, Any]:
    """A labelled question set (``samples/handbook.questions.jsonl``) decided before generation: the retrieval
    gate, then the reader at ``threshold``; over-refusal on the answerable, hallucination on the rest."""
    cases = []
    for line in Path(questions).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        chunks = retrieve(q["question"], collection)
        scores = [c.score for c in chunks]
        if not scores or max(scores) < min_retrieval_score:
            confidence = 1.0  # the retrieval gate refuses before the reader
        else:
            p = max(ev.answerable for ev in reader.read(q["question"], [c.text for c in chunks]))
            confidence = float(refusal_confidence(None, scores, p))
        cases.append(Case(q["id"], bool(q.get("is_impossible")), confidence))
    return rates(cases, threshold) | {"questions": len(cases)}
