"""Where the embedded server's time goes with concurrent RAG-sized requests, and TTFT / tok/s at 4 and 8 clients.

    taskset -c 1 nice -n 10 python bench/bench_prefill.py --label before|after [--threads 1] [--new-tokens 32]

Two parts, one JSON (``bench/results/prefill_before_after.json``, one entry per --label, so a
"before" run and an "after" run of the same command sit side by side, with after/before ratios
once both exist):

- ``profile``: the engine in-process (no HTTP), the same prompts. Forward hooks on the model time
  every forward pass, split by its query length (more than one token = prefill, one = decode
  step); the rest of the worker's busy time is the per-token bookkeeping (sampling, detokenising,
  events) and the cache row operations. Reported for 1 request alone and for N submitted at once.
- ``http``: `candor model-server` (the tests' launcher) over HTTP, streamed, greedy: single-stream
  TTFT, then for each client count, --rounds rounds of one request per client sent together; TTFT
  median/max over all requests of a level and total tok/s (median over rounds).

The HTTP TTFT of one request alone minus the in-process one is the per-request overhead of the
server (HTTP, tokenising, the asyncio hop). Nothing is asserted; threads, CPU affinity and the load
average are recorded with each part. A run updates only the parts it measures (--skip-profile /
--skip-http); --engine-file measures the ``ModelEngine`` of another copy of model_engine.py (e.g.
the previous version: in-process, and in the server through a ``sitecustomize`` shim), so before
and after are measured by the same script minutes apart; --prompts short uses ~30-token chat prompts
instead of ~414-token RAG ones; --sweep times single prefill passes by rows x prompt length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))

from bench_generation import PARAGRAPHS, build_prompts, concurrent, metrics_snapshot, single_stream  # noqa: E402

# Loaded at start-up of a model server started with --engine-file (as sitecustomize.py on its PYTHONPATH):
# the server then runs the ModelEngine of that file, everything else unchanged.
ENGINE_SHIM = """\
import importlib.util, os, sys
import candor.model_server
_spec = importlib.util.spec_from_file_location("candor.model_server.model_engine", os.environ["BENCH_ENGINE_FILE"])
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)
candor.model_server.model_engine = _module
print("bench: serving the ModelEngine of", _spec.origin, file=sys.stderr)
"""


def short_prompts(tokenizer: Any, n: int) -> list[str]:
    """n plain chat prompts (one SQuAD dev question, no context): 20-40 tokens, where batched prefill pays."""
    lines = (PARAGRAPHS.parent / "dev.questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in lines[:n]]
    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Answer in detail."}, {"role": "user", "content": q}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for q in questions
    ]


def machine(threads: int) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "threads": threads,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


# --- the in-process profile ----------------------------------------------------------------


class ForwardTimer:
    """Forward hooks on a model: seconds spent in prefill passes and in decode steps."""

    def __init__(self, model: Any) -> None:
        self.prefill_s = self.decode_s = 0.0
        self.prefill_passes = self.decode_passes = 0
        self.prefill_tokens = 0  # query positions, padding included
        self._started = 0.0
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module: Any, args: Any, kwargs: dict) -> None:
        self._started = time.perf_counter()

    def _post(self, module: Any, args: Any, kwargs: dict, out: Any) -> None:
        elapsed = time.perf_counter() - self._started
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            self.prefill_s += elapsed
            self.prefill_passes += 1
            self.prefill_tokens += ids.numel()
        else:
            self.decode_s += elapsed
            self.decode_passes += 1


def engine_module(engine_file: Path | None) -> Any:
    """candor.model_server.model_engine, or the module of another copy of that file."""
    if engine_file is None:
        from candor.model_server import model_engine

        return model_engine
    import importlib.util

    spec = importlib.util.spec_from_file_location("candor.model_server._profiled_engine", engine_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def profile_engine(args: argparse.Namespace, base_dir: Path, prompts: list[str]) -> dict:
    from candor.model_server.sampling import SamplingParams
    from candor.settings import load_settings

    mod = engine_module(args.engine_file)
    ErrorEvent, GenerationJob = mod.ErrorEvent, mod.GenerationJob  # noqa: N806
    settings = load_settings(base_model_path=base_dir, model_dtype=args.dtype, model_server_threads=args.threads)
    engine = mod.ModelEngine(settings)
    engine.load()
    timer = ForwardTimer(engine._base.model)
    busy = {"s": 0.0, "active": 0}

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            busy["active"] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                busy["s"] += time.perf_counter() - t0
                busy["active"] -= 1

        return wrapper

    engine._step = timed(engine._step)  # the worker's two kinds of work; the rest of its time is waiting
    engine._prefill = timed(engine._prefill)

    def run_batch(count: int) -> dict[str, Any]:
        before = {k: getattr(timer, k) for k in ("prefill_s", "decode_s", "prefill_passes", "decode_passes")}
        busy["s"] = 0.0
        done = threading.Semaphore(0)
        ttft: list[float] = []  # from submission to the first token
        tokens = [0]

        def sink_for(started: float) -> Any:
            first = [True]

            def sink(event: Any) -> None:
                if isinstance(event, ErrorEvent):
                    raise RuntimeError(event.message)
                if first[0]:
                    ttft.append(time.perf_counter() - started)
                    first[0] = False
                tokens[0] += 1
                if event.finish is not None:
                    done.release()

            return sink

        started = time.perf_counter()
        for i in range(count):
            ids = engine.tokenizer(prompts[i % len(prompts)])["input_ids"]
            engine.submit(GenerationJob(ids, args.new_tokens, SamplingParams()), sink_for(started))
        for _ in range(count):
            done.acquire()
        wall = time.perf_counter() - started
        while busy["active"]:  # the last finish is sent from inside a step: let that step end
            time.sleep(0.001)
        prefill = timer.prefill_s - before["prefill_s"]
        decode = timer.decode_s - before["decode_s"]
        return {
            "requests": count,
            "wall_s": round(wall, 3),
            "tokens": tokens[0],
            "total_tok_s": round(tokens[0] / wall, 2),
            "ttft_s_median": round(statistics.median(ttft), 3),
            "ttft_s_max": round(max(ttft), 3),
            "prefill_forward_s": round(prefill, 3),
            "prefill_passes": timer.prefill_passes - before["prefill_passes"],
            "decode_forward_s": round(decode, 3),
            "decode_steps": timer.decode_passes - before["decode_passes"],
            "other_engine_s": round(busy["s"] - prefill - decode, 3),
            "share": {
                "prefill": round(prefill / wall, 3),
                "decode": round(decode / wall, 3),
                "other_engine": round((busy["s"] - prefill - decode) / wall, 3),
            },
        }

    n = max(args.clients)
    try:
        run_batch(1)  # warm-up
        return {
            "engine_file": str(args.engine_file or mod.__file__),
            "alone": run_batch(1),
            f"{n}_at_once": run_batch(n),
        }
    finally:
        engine.stop()


def prefill_sweep(args: argparse.Namespace, base_dir: Path, prompts: list[str]) -> list[dict]:
    """Prefill throughput of one forward pass by rows x prompt length, as the engine builds it (left-padded).

    "ragged" rows have lengths spread over [0.75, 1] x the width (padding as real prompts of a batch
    would have), "equal" rows none. Median of 3 passes per shape; real prompt tokens only in tok/s.
    """
    import torch
    from transformers import DynamicCache

    from candor.model_server.model_engine import ModelEngine
    from candor.settings import load_settings

    settings = load_settings(base_model_path=base_dir, model_dtype=args.dtype, model_server_threads=args.threads)
    engine = ModelEngine(settings)
    engine._load_base()
    model = engine._base.model
    ids = engine.tokenizer("\n\n".join(prompts))["input_ids"]
    out = []
    with torch.inference_mode():
        for width in (32, 128, 416):
            for rows in (1, 2, 4, 8):
                for kind in ("equal", "ragged") if rows > 1 else ("equal",):
                    lengths = [
                        width if kind == "equal" else width - (width // 4) * i // (rows - 1) for i in range(rows)
                    ]
                    batch = torch.full((rows, width), engine._pad_id, dtype=torch.long)
                    mask = torch.zeros((rows, width), dtype=torch.long)
                    for i, n in enumerate(lengths):
                        batch[i, width - n :] = torch.tensor(ids[i * width : i * width + n])
                        mask[i, width - n :] = 1
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        model(
                            input_ids=batch,
                            attention_mask=mask,
                            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                            past_key_values=DynamicCache(),
                            use_cache=True,
                            logits_to_keep=1,
                        )
                        times.append(time.perf_counter() - t0)
                    t = statistics.median(times)
                    out.append(
                        {
                            "rows": rows,
                            "width": width,
                            "kind": kind,
                            "real_tokens": sum(lengths),
                            "pass_s": round(t, 4),
                            "tok_s": round(sum(lengths) / t, 1),
                        }
                    )
                    print(out[-1], flush=True)
    return out


# --- over HTTP ------------------------------------------------------------------------------


def http_levels(url: str, prompts: list[str], clients: list[int], rounds: int, new_tokens: int) -> dict:
    out: dict[str, Any] = {"single_stream": asyncio.run(single_stream(url, prompts, new_tokens, None, 3))}
    out["single_stream"].pop("runs")
    levels = []
    for c in clients:
        runs = []
        for r in range(rounds):
            shifted = prompts[r * c :] + prompts[: r * c]  # different prompts each round
            runs.append(asyncio.run(concurrent(url, shifted, c, 1, new_tokens, None)))
        levels.append(
            {
                "clients": c,
                "rounds": rounds,
                "ttft_s_median": round(statistics.median(x["ttft_s_median"] for x in runs), 3),
                "ttft_s_max": round(max(x["ttft_s_max"] for x in runs), 3),
                "total_tok_s_median": round(statistics.median(x["total_tok_s"] for x in runs), 2),
                "request_s_median": round(statistics.median(x["request_s_median"] for x in runs), 3),
                "per_round": [{k: round(v, 3) for k, v in x.items()} for x in runs],
            }
        )
    out["concurrency"] = levels
    out["server_metrics"] = metrics_snapshot(url)
    return out


def start_server(base_dir: Path, args: argparse.Namespace) -> Any:
    from fixtures.model import start_model_server

    env = None
    if args.engine_file is not None:
        shim = args.work_dir / "engine-shim"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "sitecustomize.py").write_text(ENGINE_SHIM, encoding="utf-8")
        env = {"PYTHONPATH": str(shim), "BENCH_ENGINE_FILE": str(args.engine_file.resolve())}
    cli = ["--threads", str(args.threads), "--dtype", args.dtype]
    return start_model_server(base_dir, args.work_dir, args=cli, env=env)


def compare(before: dict, after: dict) -> dict[str, float]:
    """after / before for the figures the fix is about."""
    out: dict[str, float] = {}
    for b, a in zip(before["http"]["concurrency"], after["http"]["concurrency"], strict=False):
        c = a["clients"]
        out[f"total_tok_s at {c} clients (after/before; >1 = faster)"] = round(
            a["total_tok_s_median"] / b["total_tok_s_median"], 3
        )
        out[f"ttft_s median at {c} clients (after/before; <1 = sooner)"] = round(
            a["ttft_s_median"] / b["ttft_s_median"], 3
        )
    sb, sa = before["http"]["single_stream"], after["http"]["single_stream"]
    out["single-stream ttft_s (after/before)"] = round(sa["ttft_s_median"] / sb["ttft_s_median"], 3)
    out["single-stream decode_tok_s (after/before)"] = round(sa["decode_tok_s_median"] / sb["decode_tok_s_median"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="The entry to write, e.g. before / after.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--new-tokens", type=int, default=32, help="RAG answers are short: prompt-heavy requests.")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="Also time single prefill passes by rows x length.")
    parser.add_argument("--engine-file", type=Path, help="Measure the ModelEngine of this copy of model_engine.py.")
    parser.add_argument("--prompts", choices=["rag", "short"], default="rag", help="~414-token RAG prompts or ~30.")
    parser.add_argument(
        "--base-model",
        type=Path,
        default=Path(os.environ.get("CANDOR_BASE_MODEL_PATH") or REPO / "var" / "test-cache" / "base-model"),
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prefill_before_after.json")
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / "prefill")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from transformers import AutoTokenizer

    from candor.hardware import resolve_dtype
    from candor.model_server.model_prep import prepare_base_model
    from candor.settings import load_settings

    base_dir = prepare_base_model(load_settings(base_model_path=args.base_model)).resolve()
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    n_prompts = max(args.clients) * (args.rounds + 1)
    prompts = build_prompts(tokenizer, n_prompts) if args.prompts == "rag" else short_prompts(tokenizer, n_prompts)
    workload = {
        "prompts": args.prompts,
        "engine_file": str(args.engine_file) if args.engine_file else "model_server/model_engine.py (installed)",
        "dtype": resolve_dtype(args.dtype),
        "new_tokens": args.new_tokens,
        "prompt_tokens_median": statistics.median(len(tokenizer(p)["input_ids"]) for p in prompts),
        "greedy": True,
        "clients": args.clients,
        "rounds": args.rounds,
        "max_batch_size": load_settings().max_batch_size,
    }
    report = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    entry: dict[str, Any] = report.get(args.label, {})
    entry["workload"] = workload
    if not args.skip_profile:
        conditions = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(args.threads)}
        entry["profile"] = conditions | profile_engine(args, base_dir, prompts)
        entry["profile"]["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.sweep:
        conditions = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(args.threads)}
        entry["prefill_pass_sweep"] = conditions | {"passes": prefill_sweep(args, base_dir, prompts)}
    if not args.skip_http:
        conditions = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(args.threads)}
        server = start_server(base_dir, args)
        try:
            entry["http"] = conditions | http_levels(server.url, prompts, args.clients, args.rounds, args.new_tokens)
        finally:
            server.stop()
        entry["http"]["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    if "profile" in entry and "http" in entry:
        entry["per_request_overhead_s"] = round(
            entry["http"]["single_stream"]["ttft_s_median"] - entry["profile"]["alone"]["ttft_s_median"], 3
        )
    report[args.label] = entry
    ratios = {}
    for label, other in report.items():  # every measured variant against its "before" (or "before-short")
        base = "before-short" if label.endswith("-short") else "before"
        if label.startswith(("before", "ratios", "pass_sweep")) or base not in report:
            continue
        if "http" in other and "http" in report[base]:
            ratios[f"{label} / {base}"] = compare(report[base], other)
    if ratios:
        report["ratios"] = ratios
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in entry.items() if k != "http"}, indent=2))
    if "http" in entry:
        h = entry["http"]
        print(f"single stream: TTFT {h['single_stream']['ttft_s_median']:.2f} s")
        for lv in h["concurrency"]:
            print(
                f"{lv['clients']} clients: TTFT median {lv['ttft_s_median']:.2f} s (max {lv['ttft_s_max']:.2f}), "
                f"total {lv['total_tok_s_median']:.1f} tok/s"
            )
    if "ratios" in report:
        print(json.dumps(report["ratios"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
