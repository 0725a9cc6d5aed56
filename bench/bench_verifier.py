"""What the answerability verifier adds to a chat request: latency of one question against k passages.

    taskset -c 1 python bench/bench_verifier.py [--verifier models/candor-verifier] [--k 4] [--questions 100]

The API calls ``AnswerabilityVerifier.answerable_probability(question, passages)`` once per request,
on the contexts that fit the prompt (k = 4 by default), with torch on the API process's thread count.
Here: SQuAD 2.0 dev questions, each with its own paragraph and the next k-1 paragraphs of the same
article (the length of what retrieval returns), scored one question at a time as the API does, at
1 and 2 torch threads. Reports p50/p95/mean in ms and the load. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import RESULTS, finish_report, percentile, report_header, squad_paragraphs, squad_questions

REPO = Path(__file__).resolve().parents[1]


def question_sets(n: int, k: int) -> list[tuple[str, list[str]]]:
    """``n`` dev questions spread over the split, each with k passages (its own first)."""
    paras = squad_paragraphs("dev")
    by_title: dict[str, list[dict]] = {}
    for p in paras:
        by_title.setdefault(p["title"], []).append(p)
    index = {p["doc_id"]: p for p in paras}
    rows = squad_questions("dev")
    step = max(1, len(rows) // n)
    out = []
    for row in rows[::step][:n]:
        own = index[row["doc_id"]]
        siblings = by_title[own["title"]]
        i = siblings.index(own)
        passages = [siblings[(i + j) % len(siblings)]["text"] for j in range(k)]
        out.append((row["question"], passages))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verifier", type=Path, default=REPO / "models" / "candor-verifier")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=RESULTS / "verifier.json")
    args = ap.parse_args()

    import torch

    from candor.answerability import AnswerabilityVerifier
    from candor.settings import load_settings

    settings = load_settings()
    verifier = AnswerabilityVerifier(args.verifier, settings.resolved_embed_model_path)
    sets = question_sets(args.questions, args.k)
    report = report_header({"torch": torch.__version__})
    report.update({"verifier": str(args.verifier), "k": args.k, "questions": len(sets), "by_threads": {}})
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for q, ps in sets[:5]:  # warm-up
            verifier.answerable_probability(q, ps)
        times = []
        for q, ps in sets:
            t0 = time.perf_counter()
            verifier.answerable_probability(q, ps)
            times.append(1000 * (time.perf_counter() - t0))
        report["by_threads"][str(threads)] = {
            "p50_ms": round(percentile(times, 50), 1),
            "p95_ms": round(percentile(times, 95), 1),
            "mean_ms": round(statistics.fmean(times), 1),
        }
        print(threads, report["by_threads"][str(threads)])
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
