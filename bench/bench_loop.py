"""Wall time of each stage of the retraining loop's small profile (params.small.yaml), on real data.

    nice -n 10 python bench/bench_loop.py [--adapter models/candor-refusal] [--flags 3] \
        [--out bench/results/loop_small.json]

A fresh data directory gets an answer log with --flags hallucination flags: SQuAD 2.0 dev questions
that their paragraph cannot answer, "answered" with a made-up sentence and flagged. Then, in a small
profile workspace, the stages run one by one as DVC would run them (`candor loop ...`, same env), each
timed; the gate's decision and the regression before/after are recorded. Not a test: nothing is
asserted; the JSON records the figures, the machine's load and the thread settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import squad_corpus

REPO = Path(__file__).resolve().parents[1]
STAGES = ["screen", "pairs", "prepare", "train", "evaluate", "promote"]


def flagged_answers(settings, n: int) -> list[str]:
    """Log ``n`` hallucinated answers to unanswerable dev questions and flag them (trusted: approved)."""
    from candor.feedback.store import AnswerStore

    corpus = squad_corpus("dev")
    store = AnswerStore(settings)
    store.migrate()
    ids = []
    for q in [q for q in corpus.questions if q.is_impossible][:n]:
        p = corpus.paragraphs[q.doc_id]
        answer_id = store.log_answer(
            {
                "question": q.question,
                "collection": "squad-dev",
                "chunks": [
                    {
                        "chunk_id": p.doc_id,
                        "doc_id": p.doc_id,
                        "source": f"dev.paragraphs.jsonl#{p.doc_id}",
                        "title": p.title,
                        "score": 0.6,
                        "text": p.text,
                        "prompt_text": p.text,
                    }
                ],
                "prompt_version": "candor-v1",
                "answer": "It was in 1492.",
                "refused": False,
                "adapter": settings.serving_adapter_name,
            }
        )
        ids.append(store.add_feedback(answer_id, "hallucination").id)
    store.close()
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", type=Path, default=REPO / "models" / "candor-refusal")
    ap.add_argument("--flags", type=int, default=3)
    ap.add_argument("--profile", default="small")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "bench-loop")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "loop_small.json")
    args = ap.parse_args()

    from candor.retrain.loop_params import LoopPaths, read_params
    from candor.retrain.loop_stages import export_base_data, export_inputs
    from candor.retrain.run import settings_env
    from candor.retrain.workspace import make_workspace
    from candor.settings import load_settings

    shutil.rmtree(args.work, ignore_errors=True)
    settings = load_settings(
        data_dir=args.work / "data",
        adapter_path=args.adapter.resolve() if (args.adapter / "adapter_config.json").exists() else None,
        base_model_path=Path(os.environ.get("CANDOR_BASE_MODEL_PATH", REPO / "var" / "models" / "base")).resolve(),
    )
    flags = flagged_answers(settings, args.flags)
    ws = make_workspace(args.work / "ws", REPO, args.profile)
    paths = LoopPaths(ws / "var" / "loop")
    t0 = time.perf_counter()
    export_base_data(read_params(ws / "params.yaml"), paths, settings, ws)
    exported = export_inputs(settings, paths)
    timings = {"export": round(time.perf_counter() - t0, 2)}
    env = {
        **os.environ,
        **settings_env(settings),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    load_before = os.getloadavg()
    for stage in STAGES:
        t = time.perf_counter()
        cmd = ["candor", "loop", stage] + (["--no-progress"] if stage == "train" else [])
        subprocess.run(cmd, cwd=ws, env=env, check=True)
        timings[stage] = round(time.perf_counter() - t, 2)
    metrics = json.loads(paths.metrics.read_text())
    decision = json.loads(paths.decision.read_text())
    train = json.loads((paths.train_dir / "train_summary.json").read_text())
    result = {
        "profile": args.profile,
        "starting_adapter": str(args.adapter) if settings.adapter_path else None,
        "baseline_version": exported["baseline"]["version"],
        "flags": len(flags),
        "seconds": timings,
        "total_seconds": round(sum(timings.values()), 2),
        "train": {
            k: train[k] for k in ("steps", "train_examples", "tokens_per_s", "peak_rss_mb", "first_loss", "last_loss")
        },
        "frozen": metrics["frozen"],
        "regression": metrics["regression"],
        "decision": {"verdict": decision["verdict"], "reasons": decision["reasons"]},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "torch_threads": settings.torch_threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "total_seconds", "decision", "regression")}, indent=2))


if __name__ == "__main__":
    main()
