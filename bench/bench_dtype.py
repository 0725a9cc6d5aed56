"""bf16 against float32 on this CPU: what ``auto`` (candor/hardware.py) should pick.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_dtype.py [--threads 1] [--out bench/results/dtype-<isa>.json]

The base model in each dtype, one torch thread by default: a prefill of 8 x 400 tokens (a batch of
RAG prompts), a decode step at batch 8 (mean of 16), and a training step (forward + backward with
labels, 4 x 256 tokens, one step). Records the CPU's bf16-relevant flags and what ``auto`` resolves
to, so the file says which kind of machine it describes. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, add_base_model_arg, finish_report, report_header


def measure(base: Path, dtype_name: str, seed: int = 0) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, 40000, (8, 400), generator=gen)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype_name), local_files_only=True)
    model.eval()
    with torch.inference_mode():
        model(ids[:, :32])  # warm-up
        t0 = time.perf_counter()
        past = model(ids, use_cache=True).past_key_values
        prefill = time.perf_counter() - t0
        token = ids[:, -1:]
        t0 = time.perf_counter()
        for _ in range(16):
            past = model(token, past_key_values=past, use_cache=True).past_key_values
        decode = (time.perf_counter() - t0) / 16
    model.train()
    x = ids[:4, :256]
    t0 = time.perf_counter()
    model(x, labels=x).loss.backward()  # one step: in bf16 on an AVX2-only CPU it takes minutes
    train_step = time.perf_counter() - t0
    return {
        "prefill_8x400_s": round(prefill, 2),
        "prefill_tok_s": round(ids.numel() / prefill, 1),
        "decode_step_batch8_s": round(decode, 3),
        "train_step_4x256_s": round(train_step, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_base_model_arg(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from candor.hardware import auto_float_dtype, cpu_flags
    from candor.model_server.model_prep import prepare_base_model
    from candor.settings import load_settings

    torch.set_num_threads(args.threads)
    base = prepare_base_model(load_settings(base_model_path=args.base_model)).resolve()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or f == "bf16")
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    isa = "avx512bf16" if native else ("avx512" if "avx512bw" in flags else "avx2")
    report = report_header({"torch": torch.__version__, "threads": args.threads, "cpu_flags": flags})
    report["auto_resolves_to"] = auto_float_dtype()
    report["by_dtype"] = {}
    for name in args.dtypes.split(","):
        report["by_dtype"][name] = measure(base, name)
        print(name, report["by_dtype"][name], flush=True)
    finish_report(report, args.out or RESULTS / f"dtype-{isa}.json")


if __name__ == "__main__":
    main()
