"""How the grounding check's evidence rule changes end-to-end decisions, without generating again.

    python bench/rescore_grounding.py reports/eval-rag-dev400-reader-answers.db --threshold 0.5775

A RAG evaluation's answer log keeps every raw answer, the passages as the model saw them, and the reader's
P(answerable) and evidence span per passage. This re-applies the grounding check to those same answers under
three rules: no evidence rule, the answer must share a content word with the evidence *span*, or with the
*sentence* holding the span (``candor.service.refusal_policy.evidence_sentence``, what the service applies), and
reports hallucination / over-refusal (model only, and at the reader's threshold), F1_RG and answered-F1. The
labels are SQuAD dev's: refuse when the question is unanswerable or retrieval missed its paragraph.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from common import RESULTS, write_json

from candor.data_source import data_split
from candor.finetune.metrics import Scored, auroc, decision_metrics, exact_match, token_f1
from candor.finetune.squad import load_squad
from candor.prompts import is_refusal
from candor.service.refusal_policy import evidence_sentence, grounding_support

RULES = ("none", "span", "sentence")


def rescore(db: Path, min_support: float = 0.5) -> dict[str, list[Scored]]:
    corpus = load_squad(data_split("dev"), "dev")
    by_text = {q.question: q for q in corpus.questions}
    con = sqlite3.connect(db)
    out: dict[str, list[Scored]] = {r: [] for r in RULES}
    for aid, question, raw, layer, conf in con.execute(
        "select id, question, raw_answer, refusal_layer, refusal_confidence from answers where status = 'ok'"
    ):
        q = by_text[question]
        chunks = con.execute(
            "select doc_id, prompt_text, answerable, evidence_start, evidence_end from answer_chunks "
            "where answer_id = ? order by rank",
            (aid,),
        ).fetchall()
        should_refuse = q.is_impossible or not any(c[0] == q.doc_id for c in chunks)
        sent = [c for c in chunks if c[1] is not None]
        best = max(sent, key=lambda c: c[2] or 0.0, default=None)
        for rule in RULES:
            refused = layer == "retrieval_gate" or raw is None or is_refusal(raw)
            if not refused:
                support = grounding_support(raw, [c[1] for c in sent])
                grounded = None if support is None else support >= min_support
                if grounded and rule != "none" and best is not None and best[3] is not None:
                    span = best[1][best[3] : best[4]]
                    evidence = span if rule == "span" else evidence_sentence(best[1], best[3], best[4])
                    grounded = bool(grounding_support(raw, [evidence]))
                refused = grounded is False
            em = f1 = 0.0
            if not q.is_impossible and not refused:
                em, f1 = exact_match(raw, q.answers), token_f1(raw, q.answers)
            out[rule].append(Scored(should_refuse, refused, 1.0 if conf is None else float(conf), em, f1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("--threshold", type=float, required=True, help="the reader's threshold on 1 - P(answerable)")
    ap.add_argument("--out", type=Path, default=RESULTS / "grounding-rules.json")
    args = ap.parse_args()
    report: dict = {"answers_db": str(args.db), "threshold": args.threshold, "rules": {}}
    for rule, xs in rescore(args.db).items():
        mo, at = decision_metrics(xs, None), decision_metrics(xs, args.threshold)
        report["rules"][rule] = {
            "n": len(xs),
            "auroc": round(auroc(xs), 4),
            "model_only": {k: round(mo[k], 4) for k in ("hallucination_rate", "over_refusal", "answered_f1")},
            "at_threshold": {k: round(at[k], 4) for k in ("hallucination_rate", "over_refusal", "f1_rg", "answered_f1")},  # noqa: E501
        }
        print(rule, report["rules"][rule])
    write_json(args.out, report)


if __name__ == "__main__":
    main()
