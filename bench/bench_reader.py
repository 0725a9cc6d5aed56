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

from bench_verifier import bench_args, question_sets, time_per_question
from common import finish_report, report_header

from candor.decision import READER, decide


def main() -> None:
    args = bench_args(__doc__, "reader")

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
            key = f"{variant}/threads{threads}"
            report["by_variant"][key], scores = time_per_question(reader.answerable_probability, sets)
            decisions[variant] = [decide(1.0 - p, threshold, layer=READER) is not None for p in scores]
            print(key, report["by_variant"][key])
    same = sum(a == b for a, b in zip(decisions["float32"], decisions["int8"], strict=True))
    report["int8_same_decision"] = round(same / len(sets), 4)
    print("int8 agrees with float32 on", report["int8_same_decision"])
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
