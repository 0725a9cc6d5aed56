"""Assemble reports/ from the prediction files of the oracle evaluations (whatever finished)."""
import json
from pathlib import Path
from candor.finetune.metrics import Scored, choose_threshold, exact_match, summarize, token_f1
from candor.finetune.report import write_report

E = Path("var/finetune/eval")
def rows(p): return [json.loads(l) for l in open(p)]
def scored(rs, ids=None, main_only=True):
    out = []
    for r in rs:
        if main_only and r["category"] not in ("answerable", "unanswerable"): continue
        if ids is not None and r["id"] not in ids: continue
        em = f1 = 0.0
        if not r["should_refuse"] and not r["refused_text"]:
            em, f1 = exact_match(r["prediction"], r["answers"]), token_f1(r["prediction"], r["answers"])
        out.append(Scored(r["should_refuse"], r["refused_text"], r["confidence"], em, f1, r["category"]))
    return out
def extras(rs, t):
    out = {}
    for cat in sorted({r["category"] for r in rs} - {"answerable", "unanswerable"}):
        xs = scored([r for r in rs if r["category"] == cat], main_only=False)
        out[cat] = {"n": len(xs), "refused_rate_model_only": sum(x.refused(None) for x in xs) / len(xs),
                    "refused_rate_at_threshold": sum(x.refused(t) for x in xs) / len(xs)}
    return out

models = {
    "base": (E / "base-oracle-dev-predictions/calibration-base.jsonl", E / "base-oracle-dev-predictions/predictions-base.jsonl", E / "base-oracle-dev.json"),
    "sft (λ=0)": (E / "sft-oracle-dev300-predictions/calibration-sft.jsonl", E / "sft-oracle-dev300-predictions/predictions-sft.jsonl", E / "sft-oracle-dev300.json"),
    "self-distilled (shipped)": (E / "distill-oracle-dev-predictions/calibration-candor-refusal.jsonl", E / "distill-oracle-dev300-predictions/predictions-candor-refusal.jsonl", E / "distill-oracle-dev300.json"),
}
subset_ids = None
for name, (_, pred, _) in models.items():
    if name != "base" and pred.exists():
        subset_ids = {r["id"] for r in rows(pred) if r["category"] in ("answerable", "unanswerable")}
val = {"config": {"mode": "oracle", "split": "validation articles of train", "questions": 400, "what": "validation articles of the train split (Ctenophora, Economic inequality, Huguenot), 400-question stratified sample; thresholds are chosen here"}, "models": {}}
dev = {"config": {"mode": "oracle", "split": "dev (stratified 300-question sample)", "questions": 300, "what": "SQuAD 2.0 dev, oracle mode; each model at its threshold chosen on validation",
                  "subset": None}, "models": {}}
full = {"config": {"what": "SQuAD 2.0 dev, all 1,425 questions, oracle mode"}, "models": {}}
for name, (cal, pred, res_json) in models.items():
    t = None
    if cal.exists():
        cs = scored(rows(cal))
        t, _ = choose_threshold(cs, "minimax")
        val["models"][name] = {"threshold": t, "model_only": summarize(cs, None, n_boot=300),
                               "at_threshold": summarize(cs, t, n_boot=300) if t is not None else None}
    if pred.exists():
        rs = rows(pred)
        probe = json.loads(res_json.read_text())["models"] if res_json.exists() else {}
        probe = next(iter(probe.values()), {}).get("probe") if probe else None
        ds = scored(rs, subset_ids)
        dev["models"][name] = {"threshold": t, "model_only": summarize(ds, None, n_boot=500),
                               "at_threshold": summarize(ds, t, n_boot=500) if t is not None else None,
                               "extra_categories": extras(rs, t), "probe": probe}
        if name == "base":
            fs = scored(rs)
            full["models"][name] = {"threshold": t, "model_only": summarize(fs, None, n_boot=500),
                                    "at_threshold": summarize(fs, t, n_boot=500) if t is not None else None,
                                    "extra_categories": extras(rs, t), "probe": probe}
dev["config"]["subset"] = f"{len(subset_ids) if subset_ids else 'all'} dev questions (stratified sample, seed 13)"
Path("reports").mkdir(exist_ok=True)
write_report(val, Path("reports/eval-validation.json"), Path("reports/eval-validation.md"), "Candor: validation (threshold selection)")
write_report(dev, Path("reports/eval-oracle-dev300.json"), Path("reports/eval-oracle-dev300.md"), "Candor: base vs plain SFT vs self-distilled, oracle mode, dev subset")
if full["models"]:
    write_report(full, Path("reports/eval-oracle-dev-base.json"), Path("reports/eval-oracle-dev-base.md"), "Candor: base model, oracle mode, all of dev")
for title, d in (("VAL", val), ("DEV300", dev), ("DEVFULL", full)):
    for n, r in d["models"].items():
        for key in ("model_only", "at_threshold"):
            m = r.get(key)
            if not m: continue
            print(title, n, key, "t=", r["threshold"], "n=", m["n"], {k: round(m[k], 3) for k in ("hallucination_rate", "over_refusal", "answered_f1", "em", "f1", "refusal_precision", "refusal_recall", "refusal_f1", "f1_rg", "auroc", "curve_area")})
        if r.get("extra_categories"): print("   extras", r["extra_categories"])
        if r.get("probe"): print("   probe", r["probe"]["correct"], "/", r["probe"]["n"])
