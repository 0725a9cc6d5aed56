"""Builds reports/generation-hygiene.{md,json} from the runs of issue 18 (var/hygiene/, see RUNS below).

Oracle runs: `candor eval --mode oracle --no-calibration --reader models/candor-reader` on a stratified
sample of dev, each setting through the environment (CANDOR_PROMPT_EVIDENCE, CANDOR_REPETITION_PENALTY,
CANDOR_STOP_SEQUENCES); stop-sequence variants of a run are scored from its predictions (greedy
decoding: a stopped request returns exactly the prefix before the stop sequence). Handbook runs:
`candor eval --questions samples/handbook.questions.jsonl --collection handbook --reader ...`, end to end
through the answer core and a real model server. Every answer has been through the repeat guard; "raw"
counts the model's text before it.

    .venv/bin/python bench/report_generation_hygiene.py
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

from candor.finetune.metrics import Scored, exact_match, summarize, token_f1
from candor.finetune.question_set_eval import load_question_set
from candor.generation import clip, repeats_a_sentence
from candor.prompts import is_refusal

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "var" / "hygiene"
STOP_VARIANTS = {"stop \\n\\n": ["\n\n"]}


def loads() -> dict[str, tuple[str, str]]:
    """run name -> (load average at start, at end) from runs.log."""
    out: dict[str, list[str]] = {}
    for line in (RUNS / "runs.log").read_text().splitlines():
        m = re.match(r"\s*(==|done) (\S+).*?load (\S+ \S+ \S+)", line)
        if m:
            out.setdefault(m.group(2), []).append(m.group(3).split()[0])
    return {k: (v[0], v[-1]) for k, v in out.items()}


def metrics(scored: list[Scored]) -> dict:
    m = summarize(scored, None, n_boot=0)
    return {
        "n": len(scored),
        "answered_f1": round(100 * m["answered_f1"], 1),
        "em": round(100 * m["em"], 1),
        "f1": round(100 * m["f1"], 1),
        "refused_share": round(100 * sum(s.refused(None) for s in scored) / len(scored), 1),
        "hallucination": round(100 * m["hallucination_rate"], 1),
        "over_refusal": round(100 * m["over_refusal"], 1),
    }


def oracle_rows(name: str, load: tuple[str, str]) -> list[dict]:
    run = json.loads((RUNS / f"oracle-{name}.json").read_text())
    cfg = run["config"]
    rows = []
    for model in run["models"]:
        preds = [json.loads(x) for x in (RUNS / f"oracle-{name}-predictions" / f"predictions-{model}.jsonl").open()]
        preds = [p for p in preds if p["category"] in ("answerable", "unanswerable")]
        for variant, stops in {"": [], **STOP_VARIANTS}.items():
            scored, repeats = [], 0
            for p in preds:
                text = clip(p["prediction"], stops).strip()
                refused = is_refusal(text)
                em = f1 = 0.0
                if not p["should_refuse"] and not refused:
                    em, f1 = exact_match(text, p["answers"]), token_f1(text, p["answers"])
                scored.append(Scored(p["should_refuse"], refused, p["confidence"], em, f1, p["category"]))
                repeats += repeats_a_sentence(text)
            suffix = f", {variant} (scored from predictions)" if variant else ""
            decoding = cfg["decoding"].split("; ", 1)[-1] + suffix
            rows.append(
                {
                    "set": "oracle dev",
                    "run": name,
                    "model": model,
                    "evidence": cfg.get("prompt_evidence", "none"),
                    "decoding": decoding,
                    **metrics(scored),
                    "repeating_answers": repeats,
                    "raw_repeating_answers": sum(bool(p.get("repeated_raw")) for p in preds),
                    "seconds": run["models"][model]["seconds"],
                    "load_start_end": load,
                }
            )
    return rows


def handbook_rows(name: str, load: tuple[str, str]) -> list[dict]:
    run = json.loads((RUNS / f"hb-{name}.json").read_text())
    cfg = run["config"]
    questions = {q.id: q for q in load_question_set(ROOT / cfg["questions"])}
    db = sqlite3.connect(RUNS / f"hb-{name}-answers.db")
    rows = []
    for model, res in run["models"].items():
        adapter = None if res["model"] == "base" else model
        raws = [
            r[0] or ""
            for r in db.execute("select raw_answer from answers where adapter is ? or adapter = ?", (adapter, adapter))
        ]
        scored = []
        for a in res["answers"]:
            q = questions[a["id"]]
            refused = a["refusal_layer"] is not None
            em = f1 = 0.0
            if not q.is_impossible and not refused:
                em, f1 = exact_match(a["answer"], q.answers), token_f1(a["answer"], q.answers)
            scored.append(Scored(q.is_impossible, refused, a["confidence"] or 0.0, em, f1, q.kind))
        rows.append(
            {
                "set": "handbook (end to end)",
                "run": name,
                "model": model,
                "evidence": cfg.get("prompt_evidence", "none"),
                "decoding": cfg.get("generation", ""),
                **metrics(scored),
                "repeating_answers": sum(repeats_a_sentence(a["answer"]) for a in res["answers"]),
                "raw_repeating_answers": sum(repeats_a_sentence(r) for r in raws),
                "seconds": cfg["seconds"],
                "load_start_end": load,
            }
        )
    return rows


def item_f1(name: str, model: str, stops: list[str]) -> dict[str, float]:
    """Per answerable dev question: F1 of the (clipped) answer, 0 when refused."""
    path = RUNS / f"oracle-{name}-predictions" / f"predictions-{model}.jsonl"
    out = {}
    for line in path.open():
        p = json.loads(line)
        if p["category"] != "answerable":
            continue
        text = clip(p["prediction"], stops).strip()
        out[p["id"]] = 0.0 if is_refusal(text) else token_f1(text, p["answers"])
    return out


def paired(a: str, b: str, model: str, stops: list[str], n_boot: int = 2000) -> dict | None:
    """Mean F1 over answerable questions, run b minus run a, same questions, bootstrap 95% interval."""
    import numpy as np

    try:
        fa, fb = item_f1(a, model, stops), item_f1(b, model, stops)
    except FileNotFoundError:
        return None
    ids = sorted(set(fa) & set(fb))
    d = np.array([fb[i] - fa[i] for i in ids])
    rng = np.random.default_rng(0)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "model": model,
        "from": a,
        "to": b,
        "stop": stops,
        "n_answerable": len(ids),
        "delta_f1": round(100 * float(d.mean()), 1),
        "ci95": [round(100 * float(lo), 1), round(100 * float(hi), 1)],
    }


def main(argv: list[str]) -> None:
    load = loads()
    rows = []
    for path in sorted(RUNS.glob("oracle-*.json")):
        name = path.stem.removeprefix("oracle-")
        if name in load and (RUNS / f"oracle-{name}-predictions").exists():
            rows += oracle_rows(name, load.get(name, ("?", "?")))
    for path in sorted(RUNS.glob("hb-*.json")):
        name = path.stem.removeprefix("hb-")
        rows += handbook_rows(name, load.get(f"hb-{name}", ("?", "?")))
    comparisons = []
    for model in ("base", "candor-refusal"):
        for a, b, stops in [
            ("none", "ev-sentence", []),
            ("none", "ev-span", []),
            ("ev-sentence", "ev-span", []),
            ("none", "rep1.2", []),
            ("none", "none", ["\n\n"]),
        ]:
            if a == b:  # stop sequence against none: score the same run twice
                fa, fb = item_f1(a, model, []), item_f1(b, model, stops)
                comparisons.append(
                    {"model": model, "from": a, "to": f"{a} + stop", "n_answerable": len(fa),
                     "delta_f1": round(100 * (sum(fb.values()) - sum(fa.values())) / len(fa), 1)}
                )  # fmt: skip
                continue
            c = paired(a, b, model, stops)
            if c:
                comparisons.append(c)
    out = ROOT / "reports" / "generation-hygiene.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    data = {**previous, "rows": rows, "paired_f1": comparisons}
    print(json.dumps(comparisons, indent=None))
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    cols = ["set", "model", "evidence", "decoding", "n", "answered_f1", "em", "refused_share", "hallucination",
            "over_refusal", "repeating_answers", "raw_repeating_answers", "seconds", "load_start_end"]  # fmt: skip
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        table.append("| " + " | ".join(str(r[c]).replace("|", "\\|").replace("\n", "\\n") for c in cols) + " |")
    (RUNS / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main(sys.argv[1:])
