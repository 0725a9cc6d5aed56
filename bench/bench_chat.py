"""End-to-end chat: latency p50/p95 and requests/s at 1/4/8/16 clients, through the real API.

    nice -n 10 python bench/bench_chat.py [--clients 1,4,8,16] [--requests 16] [--out PATH]

What a user waits for: `candor serve` (one uvicorn worker) and `candor model-server` run as
their own processes on loopback, over an embedded Chroma holding the SQuAD 2.0 dev paragraphs
(ingested once into var/bench/chat), with a fresh SQLite answer log. Questions are SQuAD dev
questions (answerable and unanswerable mixed, as they come), so some stop at the retrieval gate
and most reach the model. Per client count: --requests per client, back to back; p50/p95 of the
total latency and of the server's own stage timings (retrieval, generation), requests/s, and the
share of server time in each stage. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    add_server_run_args,
    finish_report,
    int_list,
    labelled_out,
    percentile,
    report_header,
    squad_paragraphs_jsonl,
    squad_questions,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
COLLECTION = "squad-dev"


def p50_p95(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}


def questions(n: int) -> list[str]:
    rows = squad_questions("dev")
    step = max(1, len(rows) // n)
    return [rows[i]["question"] for i in range(0, len(rows), step)][:n]


def ensure_corpus(data_dir: Path) -> Path:
    """The SQuAD dev paragraphs in an embedded Chroma under data_dir (ingested once, then reused)."""
    from candor.ingest.pipeline import ingest_paths
    from candor.settings import load_settings

    chroma = data_dir / "chroma"
    settings = load_settings(data_dir=data_dir, chroma_path=chroma, chroma_url=None)
    report = ingest_paths(settings, [squad_paragraphs_jsonl("dev", data_dir / "squad")], COLLECTION)
    print(f"corpus: {report.summary()}")
    return chroma


async def run_clients(url: str, secret: str, qs: list[str], clients: int, per_client: int) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {secret}"}
    results: list[dict[str, Any]] = []
    errors: dict[str, int] = {}

    async def worker(k: int, client: Any) -> None:
        for j in range(per_client):
            q = qs[(k * per_client + j) % len(qs)]
            t0 = time.perf_counter()
            r = await client.post("/v1/chat", json={"question": q, "collection": COLLECTION}, headers=headers)
            wall = time.perf_counter() - t0
            if r.status_code != 200:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                continue
            body = r.json()
            results.append(
                {
                    "wall_s": wall,
                    **{f"{name}_ms": v for name, v in body["timings_ms"].items()},
                    "refused_by": body["refusal_layer"],
                }
            )

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(k, client) for k in range(clients)))
        wall = time.perf_counter() - started
    lat = [r["wall_s"] * 1000 for r in results]
    ret = [r["retrieval_ms"] for r in results]
    gen = [r["generation_ms"] for r in results]
    tot = [r["total_ms"] for r in results]
    server_total = sum(tot) or 1.0
    return {
        "clients": clients,
        "requests": len(results),
        "errors": errors,
        "wall_s": round(wall, 2),
        "req_per_s": round(len(results) / wall, 3),
        "latency_ms": p50_p95(lat),
        "retrieval_ms": p50_p95(ret),
        "generation_ms": p50_p95(gen),
        "server_total_ms": p50_p95(tot),
        "share_of_server_time": {
            "retrieval": round(sum(ret) / server_total, 3),
            "generation": round(sum(gen) / server_total, 3),
            "other (prompt fitting, logging, queueing)": round(1 - (sum(ret) + sum(gen)) / server_total, 3),
        },
        "gate_refusals": sum(1 for r in results if r["refused_by"] == "retrieval_gate"),
        "median_generation_share": round(
            statistics.median([g / t for g, t in zip(gen, tot, strict=True) if t] or [0]), 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int_list, default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=8, help="Requests per client per level.")
    parser.add_argument("--threads", type=int, default=1, help="Model server torch threads.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    add_server_run_args(parser, "chat")
    args = parser.parse_args(argv)
    args.out = labelled_out(args, "chat")

    from fixtures.model import start_model_server
    from reliability_helpers import running_api, settings_env

    from candor.feedback.store import AnswerStore
    from candor.model_server.model_prep import prepare_base_model
    from candor.settings import load_settings

    base_dir = prepare_base_model(load_settings(base_model_path=args.base_model)).resolve()
    chroma = ensure_corpus(args.work_dir / "corpus")
    run_dir = args.work_dir / f"run-{int(time.time())}"
    settings = load_settings(data_dir=run_dir / "var")
    store = AnswerStore(settings)
    store.migrate()
    _, secret = store.create_key("bench", role="user", trusted=True)
    store.close()
    qs = questions(max(args.clients) * args.requests)

    report: dict[str, Any] = {
        **report_header(),
        "setup": {
            "corpus": "SQuAD 2.0 dev paragraphs (164), embedded Chroma",
            "api_workers": 1,
            "api_torch_threads": 1,
            "model_server_threads": args.threads,
            "max_new_tokens": args.max_new_tokens,
            "requests_per_client": args.requests,
        },
        "levels": [],
    }
    server = start_model_server(
        base_dir, run_dir / "ms", args=["--threads", str(args.threads), *args.server_args.split()]
    )
    try:
        env = settings_env(
            data_dir=settings.data_dir,
            chroma_path=chroma,
            base_model_path=base_dir,
            llm_url=server.url,
            max_new_tokens=args.max_new_tokens,
            rate_limit_per_minute=1_000_000,
            llm_timeout_s=600,
        )
        with running_api(run_dir / "api", env) as api:
            asyncio.run(run_clients(api.url, secret, qs, 1, 2))  # warm-up
            for c in args.clients:
                level = asyncio.run(run_clients(api.url, secret, qs, c, args.requests))
                report["levels"].append(level)
                print(
                    f"{c:>2} clients: {level['req_per_s']:.2f} req/s, latency p50 {level['latency_ms']['p50']:.0f} ms "
                    f"p95 {level['latency_ms']['p95']:.0f} ms; "
                    f"generation share {level['share_of_server_time']['generation']:.0%}, "
                    f"retrieval p50 {level['retrieval_ms']['p50']:.0f} ms; errors {level['errors']}"
                )
    finally:
        server.stop()
    finish_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
