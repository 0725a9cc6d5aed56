"""Candor's embedded model server vs llama.cpp, same GGUF, same prompts, same CPU, one run.

    nice -n 10 python bench/bench_llamacpp.py [--threads 2] [--new-tokens 64] [--out PATH]

Why: a user who only wants SmolLM2 on a CPU would reach for llama.cpp; this says how far the
embedded server (transformers, the GGUF dequantised to bf16) is from it, as ratios.

- embedded: `candor model-server` (the launcher the tests use) over HTTP, streamed; the same
  measurements as bench_generation.py (TTFT, decode tok/s, e2e tok/s; total tok/s at 1/4/8 clients);
- llama.cpp: llama-cpp-python (``pip install llama-cpp-python==0.3.36``, built from its sdist; the
  `[bench]` extra) loading ``SmolLM2-135M-Instruct.Q4_1.gguf`` in-process, streamed, greedy. One
  ``Llama`` object serves one request at a time (as llama-cpp-python's own server does with one
  model), so N clients queue behind a lock: their total tok/s is what that server would give.
Both see the same rendered chat-template prompts (~400 tokens of SQuAD context) and stop at
--new-tokens or end of sequence; rates count the tokens actually produced. Every llama.cpp request
starts from an empty KV cache (``Llama.reset()``), as every embedded request does: no prefix reuse. Threads are the same
for both. Nothing is asserted: this writes JSON and prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))

from bench_generation import build_prompts, concurrent, single_stream  # noqa: E402
from common import (  # noqa: E402
    StreamClock,
    add_server_run_args,
    concurrency_summary,
    engine_settings,
    finish_report,
    int_list,
    labelled_out,
    load_avgs,
    peak_rss_mb,
    report_header,
    single_stream_summary,
    stream_line,
)


def llama_stream_once(llm: Any, prompt: str, new_tokens: int) -> dict[str, float]:
    # Forget the previous request's tokens: llama-cpp-python otherwise reuses the longest common prefix
    # of its KV cache (the warm-up prompt again: TTFT 0.01 s), and the embedded server has no prefix cache.
    llm.reset()
    clock = StreamClock()
    for chunk in llm.create_completion(prompt, max_tokens=new_tokens, temperature=0.0, top_k=1, stream=True):
        choice = chunk["choices"][0]
        if choice["finish_reason"] is not None and not choice["text"]:
            continue  # the closing chunk carries no token (counting it flattered llama.cpp by 1/64 before)
        clock.tick()
    return clock.result(len(llm.tokenize(prompt.encode(), add_bos=False, special=True)))


def llama_single(llm: Any, prompts: list[str], new_tokens: int, repeats: int) -> dict:
    llama_stream_once(llm, prompts[0], 8)  # warm-up
    runs = [llama_stream_once(llm, prompts[i % len(prompts)], new_tokens) for i in range(repeats)]
    return single_stream_summary(runs)


def llama_concurrent(llm: Any, prompts: list[str], clients: int, per_client: int, new_tokens: int) -> dict:
    lock = threading.Lock()

    def worker(k: int) -> list[dict]:
        out = []
        for j in range(per_client):
            prompt = prompts[(k * per_client + j) % len(prompts)]
            queued = time.perf_counter()
            with lock:
                r = llama_stream_once(llm, prompt, new_tokens)
            waited = time.perf_counter() - queued - r["total_s"]
            r["ttft_s"] += waited  # a client's time to first token includes its wait in the queue
            r["total_s"] += waited
            out.append(r)
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(worker, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    return concurrency_summary(clients, results, wall)


def ratios(embedded: dict, llama: dict) -> dict[str, Any]:
    """embedded / llama.cpp: above 1 means the embedded server is faster (for rates) or slower (for times)."""
    e, ll = embedded["single_stream"], llama["single_stream"]
    out: dict[str, Any] = {
        "ttft_s (embedded/llama.cpp; <1 = embedded faster)": round(e["ttft_s_median"] / ll["ttft_s_median"], 3),
        "decode_tok_s (embedded/llama.cpp; >1 = embedded faster)": round(
            e["decode_tok_s_median"] / ll["decode_tok_s_median"], 3
        ),
        "e2e_tok_s (embedded/llama.cpp)": round(e["e2e_tok_s_median"] / ll["e2e_tok_s_median"], 3),
    }
    for ec, lc in zip(embedded["concurrency"], llama["concurrency"], strict=True):
        out[f"total_tok_s at {ec['clients']} clients (embedded/llama.cpp)"] = round(
            ec["total_tok_s"] / lc["total_tok_s"], 3
        )
        out[f"ttft_s median at {ec['clients']} clients (embedded/llama.cpp)"] = round(
            ec["ttft_s_median"] / lc["ttft_s_median"], 3
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        help=(
            "Embedded server dtype or engine; a comma-separated list (float32,int8,onnx-int4,onnx-int8) runs the "
            "server once per entry (onnx-*: CANDOR_MODEL_ENGINE=onnxruntime at that precision)."
        ),
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int_list, default=[1, 4, 8])
    parser.add_argument("--requests-per-client", type=int, default=1)
    add_server_run_args(parser, "llamacpp")
    args = parser.parse_args(argv)
    args.out = labelled_out(args, "llamacpp-vs-embedded")

    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36 (builds ~5 min)")
        return 2
    from fixtures.model import start_model_server
    from transformers import AutoTokenizer

    from candor.model_server.model_prep import find_gguf, prepare_base_model
    from candor.settings import load_settings

    settings = load_settings(base_model_path=args.base_model)
    base_dir = prepare_base_model(settings).resolve()
    gguf = find_gguf().path
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    prompts = build_prompts(tokenizer, max(max(args.clients) * args.requests_per_client, args.repeats))
    machine_extra = {
        "load_avg_before": load_avgs(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # the server inherits it
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    report: dict[str, Any] = {
        **report_header(machine_extra),
        "model_file": gguf.name,
        "workload": {
            "threads": args.threads,
            "new_tokens": args.new_tokens,
            "prompt_tokens_target": 400,
            "greedy": True,
            "clients": args.clients,
            "requests_per_client": args.requests_per_client,
        },
    }

    by_dtype: dict[str, dict[str, Any]] = {}
    for dtype in args.dtype.split(","):
        chosen = engine_settings(dtype, args.work_dir / "onnx-cache")
        env = {f"CANDOR_{k.upper()}": v for k, v in chosen.items()}
        cli = ["--threads", str(args.threads), *args.server_args.split()]
        server = start_model_server(base_dir, args.work_dir, args=cli, env=env)
        try:
            shown = " ".join([*cli, *(f"{k}={v}" for k, v in env.items() if k != "CANDOR_ONNX_CACHE_DIR")])
            emb: dict[str, Any] = {"engine": f"candor model-server ({dtype}, {shown})", "dtype": dtype}
            emb["single_stream"] = asyncio.run(single_stream(server.url, prompts, args.new_tokens, None, args.repeats))
            emb["concurrency"] = [
                asyncio.run(concurrent(server.url, prompts, c, args.requests_per_client, args.new_tokens, None))
                for c in args.clients
            ]
            emb["peak_rss_mb"] = peak_rss_mb(server.process.pid)
        finally:
            server.stop()
        by_dtype[dtype] = emb
    embedded = next(iter(by_dtype.values()))

    import llama_cpp

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    llama: dict[str, Any] = {"engine": f"llama-cpp-python {llama_cpp.__version__} (Q4_1 GGUF)"}
    llama["single_stream"] = llama_single(llm, prompts, args.new_tokens, args.repeats)
    llama["concurrency"] = [
        llama_concurrent(llm, prompts, c, args.requests_per_client, args.new_tokens) for c in args.clients
    ]
    llama["peak_rss_mb_this_process"] = peak_rss_mb(os.getpid())
    del llm

    report["embedded"] = embedded  # the first --dtype
    if len(by_dtype) > 1:
        report["embedded_by_dtype"] = by_dtype
        report["ratios_by_dtype"] = {d: ratios(e, llama) for d, e in by_dtype.items()}
    report["llama_cpp"] = llama
    report["ratios"] = ratios(embedded, llama)
    for name, r in [*((f"embedded {d}", e) for d, e in by_dtype.items()), ("llama.cpp", llama)]:
        print(stream_line(name, r))
    for d, e in by_dtype.items():
        for k, v in ratios(e, llama).items():
            print(f"  {d}: {k}: {v}")
    finish_report(report, args.out, all_load_avgs=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
