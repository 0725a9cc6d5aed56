"""Answer and refusal metrics for Candor's evaluation.

A refusal is a decision, so beside SQuAD's EM/F1 this reports how often the
model answers what it should refuse (hallucination) and refuses what it could
answer (over-refusal), F1_RG as Trust-Score defines it (the mean of the
refusal-decision F1 and the answer-decision F1), the AUROC of the refusal
confidence, and the hallucination/over-refusal curve as a threshold on that
confidence moves. Decisions at a threshold t are the service's own rule,
``candor.decision.decide``: the text is a refusal, or the confidence reaches t
(the service cannot un-refuse a refusal it was given).
Pure Python + numpy; numbers are fractions in [0, 1] (F1/EM too).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from candor.decision import decide


# --- SQuAD answer scoring (the official normalisation) -------------------------
def squad_normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    return float(any(squad_normalize(prediction) == squad_normalize(g) for g in golds))


def _f1(prediction: str, gold: str) -> float:
    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    return max((_f1(prediction, g) for g in golds), default=0.0)


# --- one scored answer -------------------------------------------------------------
@dataclass
class Scored:
    should_refuse: bool  # unanswerable from the context the model saw
    text_refused: bool  # the generated text is a refusal
    confidence: float  # refusal confidence (candor.refusal_score)
    em: float = 0.0  # EM/F1 of the text against the gold answers (answerable only)
    f1: float = 0.0
    category: str = ""

    def refused(self, threshold: float | None = None) -> bool:
        return decide(self.confidence, threshold, model_refused=self.text_refused) is not None


def _safe(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1_of(tp: int, fp: int, fn: int) -> float:
    p, r = _safe(tp, tp + fp), _safe(tp, tp + fn)
    return _safe(2 * p * r, p + r)


def decision_metrics(items: Sequence[Scored], threshold: float | None = None) -> dict[str, float]:
    """Every point metric at one threshold (None: the model's own text decides)."""
    ans = [x for x in items if not x.should_refuse]
    una = [x for x in items if x.should_refuse]
    ref = [x.refused(threshold) for x in items]
    tp_ref = sum(r and x.should_refuse for r, x in zip(ref, items, strict=True))
    fp_ref = sum(r and not x.should_refuse for r, x in zip(ref, items, strict=True))
    fn_ref = sum((not r) and x.should_refuse for r, x in zip(ref, items, strict=True))
    tp_ans = sum((not r) and not x.should_refuse for r, x in zip(ref, items, strict=True))
    fp_ans, fn_ans = fn_ref, fp_ref
    answered_ans = [x for x in ans if not x.refused(threshold)]
    f1_refuse, f1_answer = _f1_of(tp_ref, fp_ref, fn_ref), _f1_of(tp_ans, fp_ans, fn_ans)
    return {
        "n": len(items),
        "n_answerable": len(ans),
        "n_unanswerable": len(una),
        "em": _safe(sum(0.0 if x.refused(threshold) else x.em for x in ans), len(ans)),
        "f1": _safe(sum(0.0 if x.refused(threshold) else x.f1 for x in ans), len(ans)),
        "answered_f1": _safe(sum(x.f1 for x in answered_ans), len(answered_ans)),
        "refusal_precision": _safe(tp_ref, tp_ref + fp_ref),
        "refusal_recall": _safe(tp_ref, tp_ref + fn_ref),
        "refusal_f1": f1_refuse,
        "hallucination_rate": _safe(sum(not x.refused(threshold) for x in una), len(una)),
        "over_refusal": _safe(sum(x.refused(threshold) for x in ans), len(ans)),
        "f1_rg": (f1_refuse + f1_answer) / 2,
        "refused_rate": _safe(sum(ref), len(items)),
    }


def auroc(items: Sequence[Scored]) -> float:
    """P(confidence of a should-refuse item > that of an answerable one), ties count half."""
    pos = [x.confidence for x in items if x.should_refuse]
    neg = [x.confidence for x in items if not x.should_refuse]
    if not pos or not neg:
        return float("nan")
    import numpy as np

    allv = np.array(pos + neg)
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(sorted_v):  # average ranks over ties
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def tradeoff_curve(items: Sequence[Scored], max_points: int = 400) -> list[dict[str, float]]:
    """(threshold, over_refusal, hallucination) as the threshold falls from 'model only' to 'refuse all'.

    At most ``max_points`` thresholds (evenly spaced in rank over the distinct confidences, always
    including the lowest, which refuses everything).
    """
    values = sorted({x.confidence for x in items}, reverse=True)
    if len(values) > max_points:
        step = len(values) / max_points
        values = [values[int(i * step)] for i in range(max_points)] + [values[-1]]
    thresholds = [None, *values]
    points = []
    for t in thresholds:
        m = decision_metrics(items, t)
        points.append(
            {
                "threshold": t,
                "over_refusal": m["over_refusal"],
                "hallucination_rate": m["hallucination_rate"],
                "f1_rg": m["f1_rg"],
                "answered_f1": m["answered_f1"],
            }
        )
    return points


def curve_area(points: Sequence[dict[str, float]]) -> float:
    """Area under hallucination(over-refusal) on [0, 1]; lower is better.

    Over-refusal below the model's own operating point cannot be reached (a
    generated refusal stays a refusal), so that stretch counts as hallucination
    1: a model that refuses everything by itself scores ~1, not 0. A model
    that never errs scores 0; a random confidence at the "answer all" point 0.5.
    """
    pts = sorted(((p["over_refusal"], p["hallucination_rate"]) for p in points), key=lambda xy: (xy[0], -xy[1]))
    if not pts:
        return float("nan")
    area, (x0, y0) = pts[0][0] * 1.0, pts[0]
    for x1, y1 in pts[1:]:
        area += (x1 - x0) * (y0 + y1) / 2
        x0, y0 = x1, y1
    area += (1.0 - x0) * y0
    return area


def choose_threshold(items: Sequence[Scored], objective: str = "minimax") -> tuple[float | None, dict]:
    """The operating point, chosen on validation items (never on dev).

    minimax: the smallest worst-of-two error (hallucination vs over-refusal), ties by their sum;
    f1_rg: the largest F1_RG.
    """
    best_t, best_key, best_m = None, None, None
    for t in [None, *sorted({x.confidence for x in items})]:
        m = decision_metrics(items, t)
        h, o = m["hallucination_rate"], m["over_refusal"]
        key = (max(h, o), h + o) if objective == "minimax" else (-m["f1_rg"], max(h, o))
        if best_key is None or key < best_key:
            best_t, best_key, best_m = t, key, m
    return best_t, best_m or {}


def bootstrap_ci(
    items: Sequence[Scored],
    metric: Callable[[Sequence[Scored]], float],
    n: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile 95% interval of ``metric`` over resamples of the items."""
    import numpy as np

    if not items:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(items), len(items))
        values.append(metric([items[i] for i in idx]))
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


CI_METRICS = ("em", "f1", "answered_f1", "refusal_f1", "hallucination_rate", "over_refusal", "f1_rg")


def summarize(items: Sequence[Scored], threshold: float | None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Point metrics with bootstrap intervals, AUROC, curve area, and per category."""
    point = decision_metrics(items, threshold)
    # one resample set shared by all metrics keeps the bootstrap cost at n x (one pass)
    import numpy as np

    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    boots["auroc"] = []
    for _ in range(n_boot if items else 0):
        idx = rng.integers(0, len(items), len(items))
        sample = [items[i] for i in idx]
        m = decision_metrics(sample, threshold)
        for k in CI_METRICS:
            boots[k].append(m[k])
        boots["auroc"].append(auroc(sample))
    ci = {
        k: [float(v) for v in np.nanpercentile(vals, [2.5, 97.5])] if vals else [float("nan")] * 2
        for k, vals in boots.items()
    }
    curve = tradeoff_curve(items)
    cats: dict[str, list[Scored]] = {}
    for x in items:
        cats.setdefault(x.category or "all", []).append(x)
    per_category = {}
    for cat, xs in sorted(cats.items()):
        m = decision_metrics(xs, threshold)
        per_category[cat] = {
            "n": len(xs),
            "refused_rate": m["refused_rate"],
            **({"em": m["em"], "f1": m["f1"], "answered_f1": m["answered_f1"]} if m["n_answerable"] else {}),
        }
    return {
        "threshold": threshold,
        **point,
        "auroc": auroc(items),
        "curve_area": curve_area(curve),
        "ci95": ci if n_boot else {},  # no resamples, no interval (rather than NaN bounds)
        "per_category": per_category,
        "curve": curve,
    }
