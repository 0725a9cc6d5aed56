"""What the answerability reader adds to a chat request: latency of one question against k passages.

    taskset -c 1 python bench/bench_reader.py --reader models/candor-reader [--k 4] [--questions 100]

The API reads the passages that fit the prompt (k = 4 by default) once per request, with torch on the
API process's thread count. Here: the verifier benchmark's question sets (SQuAD 2.0 dev questions, each
with its own paragraph and the next k-1 paragraphs of its article), read one question at a time as the
API does, at 1 and 2 torch threads, in float32 and with dynamic int8 Linear weights (torch's
``quantize_dynamic``), with the share of questions whose P(answerable) lands on the same side of the
reader's threshold. Reports p50/p95/mean in ms and the load. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench_verifier import question_sets
from common import RESULTS, finish_report, percentile, report_header

from candor.decision import READER, decide

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reader", type=Path, default=REPO / "models" / "candor-reader")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=RESULTS / "reader.json")
    args = ap.parse_args()

    import torch

    from candor.reader import AnswerabilityReader
    from candor.settings import load_settings

    settings = load_settings()
    sets = question_sets(args.questions, args.k)
    report = report_header({"torch": torch.__version__})
    report.update({"reader": str(args.reader), "k": args.k, "questions": len(sets), "by_variant": {}})
    decisions: dict[str, list[bool]] = {}
    for variant in ("float32", "int8"):
        reader = AnswerabilityReader(args.reader, settings.resolved_embed_model_path, int8=variant == "int8")
        threshold = reader.threshold if reader.threshold is not None else 0.5
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            for q, ps in sets[:5]:  # warm-up
                reader.read(q, ps)
            times, refused = [], []
            for q, ps in sets:
                t0 = time.perf_counter()
                p = reader.answerable_probability(q, ps)
                times.append(1000 * (time.perf_counter() - t0))
                refused.append(decide(1.0 - p, threshold, layer=READER) is not None)
            decisions[variant] = refused
            key = f"{variant}/threads{threads}"
            report["by_variant"][key] = {
                "p50_ms": round(percentile(times, 50), 1),
                "p95_ms": round(percentile(times, 95), 1),
                "mean_ms": round(statistics.fmean(times), 1),
            }
            print(key, report["by_variant"][key])
    same = sum(a == b for a, b in zip(decisions["float32"], decisions["int8"], strict=True))
    report["int8_same_decision"] = round(same / len(sets), 4)
    print("int8 agrees with float32 on", report["int8_same_decision"])
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
