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
from collections.abc import Callable
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


def bench_args(doc: str, model: str) -> argparse.Namespace:
    """``--MODEL`` (default models/candor-MODEL), ``--k``, ``--questions``, ``--threads``, ``--out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(f"--{model}", type=Path, default=REPO / "models" / f"candor-{model}")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{model}.json")
    return ap.parse_args()


def time_per_question(score: Callable[[str, list[str]], float], sets: list[tuple[str, list[str]]]):
    """``score`` on each question alone, as the API calls it, after a warm-up of five: (p50/p95/mean ms, scores)."""
    for q, ps in sets[:5]:
        score(q, ps)
    times, scores = [], []
    for q, ps in sets:
        t0 = time.perf_counter()
        scores.append(score(q, ps))
        times.append(1000 * (time.perf_counter() - t0))
    summary = {
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "mean_ms": round(statistics.fmean(times), 1),
    }
    return summary, scores


def main() -> None:
    args = bench_args(__doc__, "verifier")

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
        report["by_threads"][str(threads)], _ = time_per_question(verifier.answerable_probability, sets)
        print(threads, report["by_threads"][str(threads)])
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
