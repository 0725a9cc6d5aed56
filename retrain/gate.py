"""The promotion gate: does the candidate adapter replace the one serving now?

Both adapters are measured in the same evaluation run, on the same frozen eval
questions (flagged questions left out) and on the regression set of flagged
prompts (``candor.retrain.loop_eval``). The candidate is promoted only if
every check passes; a rejected adapter never reaches users:

- hallucination rate does not rise by more than ``max_hallucination_rise``;
- over-refusal does not rise by more than ``max_over_refusal_rise``;
- answer F1 (answerable questions, a refusal scoring 0) does not fall by more
  than ``max_f1_drop``;
- it does not refuse (nearly) everything: refused share of the frozen set at
  most ``max_refused_rate``, and at least one answerable question answered.
  With the relative checks this stops the cheapest way to "fix" every
  hallucination flag;
- the regression set improves: at least ``min_regression_gain`` more flagged
  prompts handled as now expected than by the current adapter (or all of
  them, when there is nothing left to gain).

``decide`` is a pure function over the metrics dict, so it is tested with synthetic files;
``promote_if_passed`` applies it to a registry (the adapter's or the reader's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candor.errors import ConflictError, InvalidInputError
from candor.retrain.loop_params import GateParams

FROZEN_KEYS = ("hallucination_rate", "over_refusal", "f1", "refused_rate", "n_answerable")


def _need(metrics: dict[str, Any], *path: str) -> Any:
    cur: Any = metrics
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            raise InvalidInputError(f"metrics file lacks {'.'.join(path)}")
        cur = cur[key]
    return cur


def _check(name: str, ok: bool, detail: str, **values: Any) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail, **values}


def _bounded_change(
    name: str, label: str, metric: str, new: dict[str, float], cur: dict[str, float], *, may: str, by: float
) -> dict[str, Any]:
    """The check that the candidate's ``metric`` does not ``may`` ("rise" or "fall") by more than ``by``."""
    c, n = cur[metric], new[metric]
    if may == "rise":
        limit, ok = c + by, n <= c + by + 1e-12
    else:
        limit, ok = c - by, n >= c - by - 1e-12
    detail = f"{label} {n:.3f} vs {c:.3f} now (may {may} by {by:.3f})"
    return _check(name, ok, detail, candidate=n, current=c, limit=limit)


def decide(metrics: dict[str, Any], gate: GateParams) -> dict[str, Any]:
    """The decision with one entry per check and the reasons in words."""
    cur = {k: float(_need(metrics, "frozen", "current", k)) for k in FROZEN_KEYS}
    new = {k: float(_need(metrics, "frozen", "candidate", k)) for k in FROZEN_KEYS}
    n_reg = int(_need(metrics, "regression", "n"))
    reg_cur = int(_need(metrics, "regression", "current", "passed"))
    reg_new = int(_need(metrics, "regression", "candidate", "passed"))

    checks = [
        _bounded_change(
            "hallucination_rate",
            "hallucination rate",
            "hallucination_rate",
            new,
            cur,
            may="rise",
            by=gate.max_hallucination_rise,
        ),
        _bounded_change(
            "over_refusal", "over-refusal", "over_refusal", new, cur, may="rise", by=gate.max_over_refusal_rise
        ),
        _bounded_change("answer_f1", "answer F1", "f1", new, cur, may="fall", by=gate.max_f1_drop),
    ]
    answers_some = new["over_refusal"] < 1.0 or new["n_answerable"] == 0
    checks.append(
        _check(
            "not_refusing_everything",
            new["refused_rate"] <= gate.max_refused_rate + 1e-12 and answers_some,
            f"refuses {new['refused_rate']:.3f} of the frozen set (at most {gate.max_refused_rate:.3f}), "
            f"over-refusal {new['over_refusal']:.3f} (must answer something)",
            candidate=new["refused_rate"],
            limit=gate.max_refused_rate,
        )
    )
    if n_reg == 0:
        reg_ok, reg_detail = False, "the regression set is empty: no flag to check the adapter against"
    else:
        gain = reg_new - reg_cur
        reg_ok = gain >= gate.min_regression_gain or reg_new == n_reg
        reg_detail = (
            f"regression set: {reg_new}/{n_reg} as expected vs {reg_cur}/{n_reg} now "
            f"(needs +{gate.min_regression_gain}, or all)"
        )
    checks.append(_check("regression_improves", reg_ok, reg_detail, candidate=reg_new, current=reg_cur, n=n_reg))

    promote = all(c["ok"] for c in checks)
    failed = [c["detail"] for c in checks if not c["ok"]]
    return {
        "promote": promote,
        "verdict": "promote" if promote else "reject",
        "reasons": failed if failed else ["every check passed: " + "; ".join(c["detail"] for c in checks)],
        "checks": checks,
        "candidate": metrics.get("candidate"),
        "baseline": metrics.get("baseline"),
        "gate": dict(gate.__dict__),
    }


def promote_if_passed(
    registry: Any, candidate: Path, baseline: dict[str, Any], metrics: dict[str, Any], gate: GateParams, lineage: Any
) -> dict[str, Any]:
    """The gate's decision; a passing candidate is registered in ``registry`` (an ``AdapterRegistry`` or a
    ``ReaderRegistry``) with its lineage (``lineage(decision)``: the flag ids and the card's info) and made current,
    unless the current version changed since ``baseline`` was read."""
    decision = decide(metrics, gate)
    version = decision["candidate_version"] = registry.identify(candidate)[0]
    decision["baseline_version"] = baseline.get("version")
    decision["promoted"] = False
    current = registry.current()
    if decision["promote"] and version in {v.version for v in registry.list()}:
        # DVC reruns the promote stage on every repro: never re-promote a version someone rolled back
        if current is not None and current.version == version:
            decision["promoted"] = True
            decision["registry_path"] = str(current.path)
            decision["reasons"].append("already current")
        else:
            decision.update(promote=False, verdict="reject")
            decision["reasons"] = [
                f"{registry.LABEL} {version} was registered before and is not current (rolled back?): "
                f"not promoting it again automatically; `candor {registry.COMMAND} promote` does it by hand"
            ]
    elif decision["promote"]:
        flag_ids, info = lineage(decision)
        entry = registry.register(
            candidate, source="loop", parent=baseline.get("version"), flag_ids=flag_ids, info=info
        )
        try:
            registry.promote(entry.version, note=registry.GATE_NOTE, expect_current=baseline.get("version"))
        except ConflictError as exc:
            decision.update(promote=False, verdict="reject")
            decision["reasons"] = [f"not promoted: {exc}"]
        else:
            decision["promoted"] = True
            decision["registry_path"] = str(entry.path)
    return decision
