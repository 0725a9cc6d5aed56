"""Do int8 and bf16 serving give the same answers? Greedy answers of the engine on SQuAD dev questions.

    taskset -c 1 python bench/bench_int8_agreement.py [--limit 40] [--dtypes bfloat16,int8,float32]

Oracle mode as `candor eval` builds it (params.yaml eval: seed 13, each question with its own
paragraph, the answerable/unanswerable mix of dev kept), the shipped adapter models/candor-refusal,
the service's prompt (candor.prompts.build_messages), greedy, max_new_tokens 32, top_n_tokens 5.
Each dtype is served by its own in-process ModelEngine (the serving path: merge in float32, then
cast or quantize), one request at a time so batch composition cannot change the numbers.
Compared against the first dtype: first token, exact answer text, refusal or not (candor.prompts.is_refusal),
and the refusal probability the service thresholds (candor.refusal_score). float32 is there as the
reference both are rounded from: bf16 itself is not the exact model.
Writes bench/results/int8_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def generate_all(engine: Any, prompts: list[list[int]], adapter: str, new_tokens: int) -> list[dict]:
    from candor.model_server.model_engine import ErrorEvent, GenerationJob
    from candor.model_server.sampling import SamplingParams
    from candor.refusal_score import refusal_token_probability

    out = []
    for ids in prompts:
        events: list = []
        done = threading.Event()

        def sink(event: Any, events: list = events, done: threading.Event = done) -> None:
            events.append(event)
            if isinstance(event, ErrorEvent) or event.finish is not None:
                done.set()

        engine.submit(GenerationJob(ids, new_tokens, SamplingParams(top_n_tokens=5), adapter=adapter), sink)
        if not done.wait(600) or isinstance(events[-1], ErrorEvent):
            raise RuntimeError(f"generation failed: {events[-1] if events else 'timeout'}")
        first = events[0]
        out.append(
            {
                "first_token": first.token.id,
                "text": events[-1].finish.generated_text,
                "p_refusal": refusal_token_probability([(t.text, t.logprob) for t in first.top_tokens]),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--dtypes", default="bfloat16,int8,float32", help="The first is the reference.")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reuse", type=Path, default=None, help="An earlier output: reuse its engines' raw results.")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="The adapter's refusal-probability threshold (its card); decisions also count p_refusal >= it.",
    )
    parser.add_argument("--source", type=Path, default=None, help="SQuAD data; default: CANDOR_DATA_SOURCE.")
    parser.add_argument("--adapter", type=Path, default=REPO / "models" / "candor-refusal")
    parser.add_argument(
        "--base-model",
        type=Path,
        default=Path(os.environ.get("CANDOR_BASE_MODEL_PATH") or REPO / "var" / "test-cache" / "base-model"),
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_agreement.json")
    args = parser.parse_args(argv)

    from common import cpu_info, engine_settings, squad_corpus

    from candor.decision import decide
    from candor.finetune.evaluate import oracle_items
    from candor.finetune.metrics import token_f1
    from candor.model_server.adapters import AdapterSpec
    from candor.model_server.onnx_engine import make_engine
    from candor.prompts import build_messages, is_refusal
    from candor.settings import load_settings

    items = oracle_items(squad_corpus("dev", args.source), limit=args.limit, seed=13, distractors=0)
    dtypes = args.dtypes.split(",")
    results: dict[str, list[dict]] = {}
    timing: dict[str, float] = {}
    prompts: list[list[int]] = []
    earlier = json.loads(args.reuse.read_text(encoding="utf-8")) if args.reuse else {}
    for dtype in dtypes:
        if len(earlier.get("raw", {}).get(dtype, [])) == len(items):
            results[dtype] = earlier["raw"][dtype]  # the same questions, answered by an earlier run of this script
            timing[dtype] = earlier["generation_seconds"][dtype]
            print(f"{dtype}: reused from {args.reuse}", flush=True)
            continue
        chosen = engine_settings(dtype, REPO / "var" / "bench" / "onnx-cache")
        settings = load_settings(base_model_path=args.base_model, model_server_threads=1, **chosen)
        engine = make_engine(settings, [AdapterSpec("refusal", args.adapter)])
        engine.load()
        try:
            if not prompts:
                tok = engine.tokenizer
                prompts = [
                    tok(
                        tok.apply_chat_template(
                            build_messages(it.question, it.chunks), tokenize=False, add_generation_prompt=True
                        )
                    )["input_ids"]
                    for it in items
                ]
            t0 = time.perf_counter()
            results[dtype] = generate_all(engine, prompts, "refusal", args.new_tokens)
            timing[dtype] = round(time.perf_counter() - t0, 1)
        finally:
            engine.stop()
        print(f"{dtype}: {timing[dtype]} s", flush=True)

    def decided(r: dict) -> bool:
        """Refused: the answer is a refusal, or the refusal probability reaches the adapter's threshold."""
        return decide(r["p_refusal"], args.threshold, model_refused=is_refusal(r["text"])) is not None

    def answered_f1(rs: list[dict]) -> float:
        """Mean token F1 over the answerable questions this engine answered (x100)."""
        scores = [
            token_f1(r["text"], it.answers)
            for r, it in zip(rs, items, strict=True)
            if not it.should_refuse and not decided(r)
        ]
        return 100 * statistics.mean(scores) if scores else 0.0

    ref_name = dtypes[0]
    ref = results[ref_name]
    comparisons = {}
    for dtype in dtypes[1:]:
        got = results[dtype]
        diffs = [abs(a["p_refusal"] - b["p_refusal"]) for a, b in zip(ref, got, strict=True)]
        comparisons[f"{dtype} vs {ref_name}"] = {
            "first_token_agreement": round(
                sum(a["first_token"] == b["first_token"] for a, b in zip(ref, got, strict=True)) / len(ref), 3
            ),
            "exact_text_agreement": round(
                sum(a["text"] == b["text"] for a, b in zip(ref, got, strict=True)) / len(ref), 3
            ),
            "refusal_decision_agreement": round(
                sum(is_refusal(a["text"]) == is_refusal(b["text"]) for a, b in zip(ref, got, strict=True)) / len(ref), 3
            ),
            "decision_agreement_at_threshold": round(
                sum(decided(a) == decided(b) for a, b in zip(ref, got, strict=True)) / len(ref), 3
            ),
            "answered_f1_difference": round(answered_f1(got) - answered_f1(ref), 1),
            "p_refusal_abs_diff_mean": round(statistics.mean(diffs), 4),
            "p_refusal_abs_diff_max": round(max(diffs), 4),
        }
    if "float32" in results and "int8" in results and ref_name != "float32" and "bfloat16" in results:
        f32 = results["float32"]
        for dtype in ("bfloat16", "int8"):
            got = results[dtype]
            comparisons[f"{dtype} vs float32"] = {
                "first_token_agreement": round(
                    sum(a["first_token"] == b["first_token"] for a, b in zip(f32, got, strict=True)) / len(f32), 3
                ),
                "exact_text_agreement": round(
                    sum(a["text"] == b["text"] for a, b in zip(f32, got, strict=True)) / len(f32), 3
                ),
            }
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "setup": {
            "questions": len(items),
            "unanswerable": sum(it.should_refuse for it in items),
            "mode": "oracle, own paragraph, SQuAD 2.0 dev, seed 13",
            "cpu": cpu_info(),
            "adapter": str(args.adapter.relative_to(REPO)) if args.adapter.is_relative_to(REPO) else str(args.adapter),
            "greedy": True,
            "max_new_tokens": args.new_tokens,
            "threads": 1,
            "cpu_affinity": sorted(os.sched_getaffinity(0)),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        },
        "generation_seconds": timing,
        "refused": {d: sum(is_refusal(r["text"]) for r in rs) for d, rs in results.items()},
        "refused_at_threshold": {d: sum(decided(r) for r in rs) for d, rs in results.items()},
        "answered_f1": {d: round(answered_f1(rs), 1) for d, rs in results.items()},
        "threshold": args.threshold,
        "comparisons": comparisons,
        "raw": results,
        "answers": [
            {"id": it.id, "should_refuse": it.should_refuse, **{d: results[d][i]["text"] for d in dtypes}}
            for i, it in enumerate(items)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"comparisons": comparisons, "refused": report["refused"]}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
