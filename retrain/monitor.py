"""After promotion: flag and refusal rates per adapter version, and a rollback when they rise.

The gate judges an adapter on a frozen set; users judge it on real questions.
The answer log records which adapter version answered every question, so the
rates of the current version can be compared with those of the version it
replaced (the top of the registry's rollback stack). When the current one has
answered at least ``min_answers`` questions and its flag rate (or refusal
rate) is higher by more than the margin in params, rollback is recommended
loudly, or done (``auto_rollback``). ``candor adapters check`` and
``candor retrain`` run this; the numbers are also written as a metrics file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from candor.feedback.store import AnswerStore
from candor.retrain.adapters import AdapterRegistry
from candor.retrain.loop_params import MonitorParams


def _rates(stats: Sequence[dict[str, Any]], version: str | None) -> dict[str, Any] | None:
    if version is None:
        return None
    rows = [s for s in stats if s.get("adapter_version") == version]
    if not rows:
        return {"version": version, "answers": 0, "flags": 0, "refusals": 0, "flag_rate": 0.0, "refusal_rate": 0.0}
    answers = sum(r["answers"] for r in rows)
    # a "correct" flag is praise, not a complaint
    flags = sum(r["flags"] - (r.get("flags_by_verdict") or {}).get("correct", 0) for r in rows)
    refusals = sum(r["refusals"] for r in rows)
    return {
        "version": version,
        "answers": answers,
        "flags": flags,
        "refusals": refusals,
        "flag_rate": flags / answers if answers else 0.0,
        "refusal_rate": refusals / answers if answers else 0.0,
    }


def adapter_health(
    stats: Sequence[dict[str, Any]], current: str | None, previous: str | None, params: MonitorParams
) -> dict[str, Any]:
    """Compare the current version's live rates with the previous version's; pure."""
    cur, prev = _rates(stats, current), _rates(stats, previous)
    out: dict[str, Any] = {"current": cur, "previous": prev, "recommend_rollback": False, "reasons": []}
    if cur is None:
        out["status"] = "no_adapter"
        return out
    if cur["answers"] < params.min_answers:
        out["status"] = "too_early"
        out["reasons"].append(f"version {current} has {cur['answers']} answers; judged from {params.min_answers}")
        return out
    if prev is None or prev["answers"] < params.min_answers:
        out["status"] = "no_baseline"
        out["reasons"].append("no earlier version with enough answers to compare with")
        return out
    flag_rise = cur["flag_rate"] - prev["flag_rate"]
    refusal_rise = cur["refusal_rate"] - prev["refusal_rate"]
    out["flag_rate_rise"], out["refusal_rate_rise"] = flag_rise, refusal_rise
    if flag_rise > params.max_flag_rate_rise:
        out["reasons"].append(
            f"flag rate {cur['flag_rate']:.3f} vs {prev['flag_rate']:.3f} for {previous} "
            f"(+{flag_rise:.3f} > {params.max_flag_rate_rise:.3f})"
        )
    if refusal_rise > params.max_refusal_rate_rise:
        out["reasons"].append(
            f"refusal rate {cur['refusal_rate']:.3f} vs {prev['refusal_rate']:.3f} for {previous} "
            f"(+{refusal_rise:.3f} > {params.max_refusal_rate_rise:.3f})"
        )
    out["recommend_rollback"] = bool(out["reasons"])
    out["status"] = "rollback_recommended" if out["recommend_rollback"] else "ok"
    return out


def check_health(settings: Any, params: MonitorParams) -> dict[str, Any]:
    """Live rates from the answer log for the registry's current and previous versions."""
    registry = AdapterRegistry.for_settings(settings)
    cur, prev = registry.current(), registry.previous()
    store = AnswerStore(settings)
    try:
        stats = [
            {**s.model_dump(mode="json"), "flag_rate": s.flag_rate, "refusal_rate": s.refusal_rate}
            for s in store.adapter_stats()
        ]
    finally:
        store.close()
    report = adapter_health(stats, cur.version if cur else None, prev.version if prev else None, params)
    report["per_version"] = stats
    return report
