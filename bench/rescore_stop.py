"""What one more stop sequence does to saved oracle answers, without generating again.

    python bench/rescore_stop.py reports/eval-oracle-dev300-evidence-s400.json --stop "\\nQuestion:"

Decoding is greedy, so a request stopped at a sequence returns exactly the saved text up to it. This cuts
every saved prediction of an oracle evaluation (``<report>-predictions/predictions-<model>.jsonl``) at the
extra stop sequence and tidies it as the answer core does (``candor.generation.clip``; an answer left with
no words is the model's refusal, ``candor.prompts.gives_no_answer``). "saved" is the same text tidied
without the cut (runs before ``tidy`` kept the opening), so the difference is the stop sequence's alone:
answered-F1 and EM, model alone and at the report's threshold, and the number of answers the cut changed.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import codecs
import json
from pathlib import Path

from common import RESULTS, write_json

from candor.finetune.metrics import Scored, decision_metrics, exact_match, token_f1
from candor.generation import clip
from candor.prompts import gives_no_answer


def rescore(predictions: Path, stop: str, threshold: float | None) -> dict:
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["category"] in ("answerable", "unanswerable")]  # the headline questions
    out: dict = {"predictions": str(predictions), "n": len(rows), "changed": 0}
    for label, stops in (("saved", []), ("with_stop", [stop])):
        scored = []
        for r in rows:
            text, refused = r["prediction"] or "", bool(r["refused_text"])
            if not refused:  # today's answer core on the saved text (older runs kept the opening), then the cut
                new = clip(text, stops)
                if stops and new != clip(text):
                    out["changed"] += 1
                text, refused = new, gives_no_answer(new)
            em = f1 = 0.0
            if not r["should_refuse"] and not refused:
                em, f1 = exact_match(text, r["answers"]), token_f1(text, r["answers"])
            scored.append(Scored(r["should_refuse"], refused, r["confidence"], em, f1, r["category"]))
        alone = decision_metrics(scored, None)
        out[label] = {"model_only": _pick(alone)}
        if threshold is not None:
            out[label]["at_threshold"] = _pick(decision_metrics(scored, threshold))
    return out


def _pick(m: dict) -> dict:
    keys = ("answered_f1", "em", "hallucination_rate", "over_refusal")
    return {k: round(100 * m[k], 1) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="oracle evaluation JSON files (their -predictions folders)")
    ap.add_argument("--stop", default="\nQuestion:", help="the extra stop sequence (escapes like \\n are read)")
    ap.add_argument("--out", type=Path, default=RESULTS / "rescore-stop-question.json")
    args = ap.parse_args()
    stop = codecs.decode(args.stop, "unicode_escape") if args.stop.isascii() else args.stop
    results = []
    for report in args.reports:
        run = json.loads(report.read_text(encoding="utf-8"))
        for name, res in run["models"].items():
            preds = report.parent / f"{report.stem}-predictions" / f"predictions-{name}.jsonl"
            if not preds.exists():
                print(f"skipped {name} in {report}: no {preds}")
                continue
            threshold = (res.get("calibration") or {}).get("threshold")
            row = {"report": str(report), "model": name, "threshold": threshold, **rescore(preds, stop, threshold)}
            results.append(row)
            s, w = row["saved"], row["with_stop"]
            line = f"{report.stem} {name}: changed {row['changed']}; answered-F1 alone {s['model_only']['answered_f1']}"
            line += f" -> {w['model_only']['answered_f1']}"
            if threshold is not None:
                line += f", at threshold {s['at_threshold']['answered_f1']} -> {w['at_threshold']['answered_f1']}"
            print(line)
    write_json(args.out, {"stop": stop, "results": results})


if __name__ == "__main__":
    main()
