"""Generation speed of the embedded TGI-compatible server, over real HTTP.

    nice -n 10 python bench/bench_generation.py [--threads 2] [--url URL] [--out PATH]

Per configuration (base model; a LoRA adapter chosen by adapter_id):
- single stream: greedy, 128 new tokens, a ~400-token RAG-style prompt, streamed:
  time to first token (TTFT), decode tokens/s (after the first token) and
  end-to-end tokens/s; median of --repeats runs;
- total tokens/s with 1, 4 and 8 concurrent clients, each sending
  --requests-per-client requests (different prompts) back to back;
- peak RSS of the server process (VmHWM), after the runs.

Unless --url is given, the script starts `candor model-server` itself (once
without adapter, once with a random LoRA adapter, r=16 on all linear layers,
the size of the refusal adapter; or --adapter-path). Prompts ask for a long
answer so that most requests run the full 128 tokens; the tokens actually
generated are what is counted. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    StreamClock,
    concurrency_summary,
    finish_report,
    int_list,
    peak_rss_mb,
    report_header,
    single_stream_summary,
    squad_paragraphs,
    stream_line,
)

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant. Use the context passages."
ASK = "Retell everything the passages above say, in a long and detailed answer with many sentences."


def paragraph_texts(split: str = "dev") -> list[str]:
    """The prompts' context: SQuAD paragraphs from CANDOR_DATA_SOURCE (JSONL folder or official JSON)."""
    return [p["text"] for p in squad_paragraphs(split)]


def build_prompts(tokenizer: Any, n: int, target_tokens: int = 400) -> list[str]:
    """n different prompts of about target_tokens tokens: SQuAD paragraphs plus a long-answer question."""
    paragraphs = paragraph_texts()
    prompts, i = [], 0
    for _ in range(n):
        context: list[str] = []
        while True:
            context.append(paragraphs[i % len(paragraphs)])
            i += 1
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Context:\n" + "\n\n".join(context) + "\n\n" + ASK},
            ]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if len(tokenizer(text)["input_ids"]) >= target_tokens - 60:
                break
        ids = tokenizer(text)["input_ids"]
        if len(ids) > target_tokens + 60:  # trim the context to land near the target
            words = context[-1].split()
            while len(ids) > target_tokens + 20 and words:
                words = words[: int(len(words) * 0.9)]
                context[-1] = " ".join(words)
                messages[1]["content"] = "Context:\n" + "\n\n".join(context) + "\n\n" + ASK
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                ids = tokenizer(text)["input_ids"]
        prompts.append(text)
    return prompts


async def stream_once(client: Any, url: str, prompt: str, new_tokens: int, adapter: str | None) -> dict[str, float]:
    params: dict[str, Any] = {"max_new_tokens": new_tokens, "details": True}
    if adapter:
        params["adapter_id"] = adapter
    clock = StreamClock()
    input_length = None
    async with client.stream("POST", url + "/generate_stream", json={"inputs": prompt, "parameters": params}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"])
            clock.tick()
            if event.get("details"):
                input_length = event["details"]["input_length"]
    return clock.result(input_length or 0)


async def single_stream(url: str, prompts: list[str], new_tokens: int, adapter: str | None, repeats: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        await stream_once(client, url, prompts[0], 8, adapter)  # warm-up
        runs = [await stream_once(client, url, prompts[i % len(prompts)], new_tokens, adapter) for i in range(repeats)]
    return single_stream_summary(runs)


async def concurrent(
    url: str, prompts: list[str], clients: int, per_client: int, new_tokens: int, adapter: str | None
) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=clients + 2)) as client:

        async def worker(k: int) -> list[dict]:
            out = []
            for j in range(per_client):
                prompt = prompts[(k * per_client + j) % len(prompts)]
                out.append(await stream_once(client, url, prompt, new_tokens, adapter))
            return out

        started = time.perf_counter()
        results = [r for batch in await asyncio.gather(*(worker(k) for k in range(clients))) for r in batch]
        wall = time.perf_counter() - started
    return concurrency_summary(clients, results, wall)


def metrics_snapshot(url: str) -> dict[str, float]:
    import httpx

    wanted = (
        "candor_model_max_batch_rows",
        "candor_model_decode_steps_total",
        "candor_model_decode_rows_total",
        "candor_model_prefills_total",
        "candor_model_prefill_passes_total",
        "candor_model_max_prefill_rows",
    )
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name] = float(value)
    return out


def run_config(url: str, tokenizer: Any, args: argparse.Namespace, adapter: str | None, pid: int | None) -> dict:
    prompts = build_prompts(tokenizer, max(8 * args.requests_per_client, args.repeats))
    result: dict[str, Any] = {"adapter": adapter}
    result["single_stream"] = asyncio.run(single_stream(url, prompts, args.new_tokens, adapter, args.repeats))
    result["concurrency"] = [
        asyncio.run(concurrent(url, prompts, c, args.requests_per_client, args.new_tokens, adapter))
        for c in args.clients
    ]
    result["server_metrics"] = metrics_snapshot(url)
    if pid is not None:
        result["peak_rss_mb"] = peak_rss_mb(pid)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Benchmark a running server instead of starting one.")
    parser.add_argument("--adapter-id", help="With --url: the adapter to select for the adapter runs.")
    parser.add_argument("--adapter-path", type=Path, help="LoRA adapter to serve (default: a random r=16 one).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int_list, default=[1, 4, 8])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: bench/results/generation-threads<N>.json")
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / "generation")
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "bench" / "results" / f"generation-threads{args.threads}.json"

    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.model import make_tiny_adapter, start_model_server  # the same launcher the tests use

    from candor.model_server.model_prep import prepare_base_model
    from candor.settings import load_settings

    settings = load_settings()
    base_dir = prepare_base_model(settings).resolve()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    report: dict[str, Any] = {
        **report_header(),
        "server": {"threads": args.threads, "dtype": settings.model_dtype, "max_batch_size": settings.max_batch_size},
        "workload": {
            "new_tokens": args.new_tokens,
            "prompt_tokens_target": 400,
            "greedy": True,
            "clients": args.clients,
            "requests_per_client": args.requests_per_client,
        },
        "configs": [],
    }
    if args.url:
        report["configs"].append(run_config(args.url, tokenizer, args, None, None))
        if args.adapter_id:
            report["configs"].append(run_config(args.url, tokenizer, args, args.adapter_id, None))
    else:
        adapter_path = args.adapter_path or make_tiny_adapter(
            base_dir, args.work_dir / "adapter-r16", rank=16, std=0.02, seed=0
        )
        cli = ["--threads", str(args.threads), "--dtype", args.dtype]
        for adapters, adapter_id in ((None, None), ({"bench": adapter_path}, "bench")):
            server = start_model_server(base_dir, args.work_dir, adapters=adapters, args=cli)
            try:
                report["configs"].append(run_config(server.url, tokenizer, args, adapter_id, server.process.pid))
            finally:
                server.stop()
    for cfg in report["configs"]:
        name = f"adapter={cfg['adapter']}"
        print(f"{stream_line(name, cfg)}; peak RSS {cfg.get('peak_rss_mb')} MB")
    finish_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
