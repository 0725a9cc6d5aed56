"""A base-model profile prepared and served: load time, server RSS and a few greedy generations over TGI.

    taskset -c 0 python bench/bench_profile_serve.py --profile gemma3-270m [--out PATH]

Prepares the profile once (``candor model prepare``; timed only when it converts), starts
``candor model-server`` on it (float32 weights where the CPU lacks fast bf16, else bf16: ``auto``), waits for
/health, and posts a few prompts rendered with the prepared tokenizer's chat template to /generate
(greedy, 24 new tokens). Records the time to ready, the server's peak RSS, each generation's latency and text.
Nothing is asserted: tests/test_profile_gemma.py holds the checks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import finish_report, peak_rss_mb, report_header

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

PROMPTS = [
    "What is the capital of France?",
    "Passage: The Amazon river flows through Brazil, Peru and Colombia.\n\nQuestion: Which countries does the "
    "Amazon flow through?",
    "Name three primary colours.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gemma3-270m")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import httpx
    from fixtures.model import start_model_server

    from candor.model_server.model_prep import prepare_base_model
    from candor.service.chat_template import PromptRenderer
    from candor.settings import load_settings

    settings = load_settings(model_profile=args.profile)
    t0 = time.perf_counter()
    base = prepare_base_model(settings).resolve()
    prepare_s = time.perf_counter() - t0
    report = report_header({"taskset": "core 0"})
    report.update({"profile": args.profile, "base_model": str(base), "prepare_s_if_converted": round(prepare_s, 1)})

    work = REPO / "var" / "bench" / f"profile-serve-{args.profile}"
    t0 = time.perf_counter()
    server = start_model_server(base, work, env={"CANDOR_MODEL_PROFILE": args.profile})
    report["server_ready_s"] = round(time.perf_counter() - t0, 1)
    try:
        info = httpx.get(f"{server.url}/info", timeout=30).json()
        report["info"] = {k: info[k] for k in ("model_id", "model_dtype", "model_device_type")}
        renderer = PromptRenderer(base)
        runs = []
        for question in PROMPTS:
            prompt = renderer.render([{"role": "user", "content": question}])
            t0 = time.perf_counter()
            r = httpx.post(
                f"{server.url}/generate",
                json={"inputs": prompt, "parameters": {"max_new_tokens": args.max_new_tokens, "details": True}},
                timeout=600,
            )
            r.raise_for_status()
            body = r.json()
            runs.append(
                {
                    "prompt_tokens": renderer.count_text_tokens(prompt),
                    "seconds": round(time.perf_counter() - t0, 2),
                    "generated_tokens": body["details"]["generated_tokens"],
                    "finish_reason": body["details"]["finish_reason"],
                    "question": question,
                    "text": body["generated_text"],
                }
            )
        report["generations"] = runs
        report["server_peak_rss_mb"] = peak_rss_mb(server.process.pid)
    finally:
        server.stop()
    finish_report(report, args.out or REPO / "bench" / "results" / f"profile-serve-{args.profile}.json")


if __name__ == "__main__":
    main()
