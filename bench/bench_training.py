"""Training cost on this CPU: QLoRA (nf4 base) vs unquantized LoRA, per base-model profile, a few steps each.

    nice -n 10 python bench/bench_training.py [--steps 6] [--batch 4] [--threads 2] [--out PATH]
    python bench/bench_training.py --profiles smollm2-135m,gemma3-270m --configs qlora-nf4 \
        --out bench/results/training-profiles.json

Each configuration runs `candor.finetune.train` (the trainer the pipeline uses) in its own
process, with ``CANDOR_MODEL_PROFILE`` set to its profile (each profile's prepared base model:
`candor model prepare --profile NAME`), so peak memory (ru_maxrss) is that configuration's alone,
on the same examples (the first --examples of the training set: var/finetune/data/train.jsonl, or
--train-file), same LoRA (r=16, all linear), same batch and max length. Both compute in the
dtype ``auto`` picks on this CPU (float32 on AVX2, bf16 where the CPU has bf16 kernels; the
report's ``machine.cpu`` says which). Reported: tokens/s over the steps after the first (the first
pays for warm-up), the trainer's own tokens/s, seconds per step and peak RSS. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, finish_report, report_header

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"qlora-nf4": "nf4", "lora-bf16": "none"}  # the second's name predates dtype auto: unquantized LoRA


def one(args: argparse.Namespace) -> int:
    """Child mode: train one configuration and print its summary as JSON on the last line."""
    from candor.finetune.train import TrainConfig, train
    from candor.settings import load_settings

    out = args.work_dir / args.one
    cfg = TrainConfig(
        output_dir=str(out),
        train_file=str(args.train_file),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        warmup_steps=0,
        max_length=args.max_length,
        logging_steps=1,
        save_steps=10_000,
        torch_threads=args.threads,
        quantization=CONFIGS[args.one],
        limit_examples=args.examples,
    )
    summary = train(cfg, load_settings(), resume=False, progress=False)
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    if len(steps) > 1:
        tok = steps[-1]["tokens"] - steps[0]["tokens"]
        secs = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
        summary["steady_tokens_per_s"] = round(tok / secs, 1) if secs > 0 else None
        summary["steady_s_per_step"] = round(secs / (len(steps) - 1), 2)
    summary.pop("config", None)
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-file", type=Path, default=REPO / "var" / "finetune" / "data" / "train.jsonl")
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json")
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / "training")
    parser.add_argument("--profiles", default="", help="Comma-separated base-model profiles (default: the default)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"Comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        args.work_dir = args.work_dir / os.environ.get("CANDOR_MODEL_PROFILE", "default")
        return one(args)
    if not args.train_file.exists():
        print(f"no training file at {args.train_file}: run `candor finetune build-data` or pass --train-file")
        return 2
    from candor.profile import PROFILES, get_profile

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()] or [get_profile().name]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [p for p in profiles if p not in PROFILES] + [c for c in configs if c not in CONFIGS]
    if unknown:
        print(
            f"unknown profile or config: {', '.join(unknown)} (profiles: {', '.join(PROFILES)}; "
            f"configs: {', '.join(CONFIGS)})"
        )
        return 2

    report: dict[str, Any] = {
        **report_header(),
        "workload": {
            "steps": args.steps,
            "batch": args.batch,
            "max_length": args.max_length,
            "examples": args.examples,
            "threads": args.threads,
            "lora": "r=16, all linear",
            "profiles": profiles,
        },
        "configs": {},
    }
    runs = [(p, c) for p in profiles for c in configs]
    for profile, config in runs:
        name = config if len(profiles) == 1 else f"{profile}/{config}"
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads)}
        env["CANDOR_MODEL_PROFILE"] = profile
        cmd = [sys.executable, __file__, "--one", config, "--steps", str(args.steps), "--batch", str(args.batch)]
        cmd += ["--max-length", str(args.max_length), "--examples", str(args.examples), "--threads", str(args.threads)]
        cmd += ["--train-file", str(args.train_file), "--work-dir", str(args.work_dir)]
        started = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            report["configs"][name] = {"error": proc.stderr[-2000:]}
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        summary["profile"] = profile
        summary["wall_s_including_load"] = round(time.monotonic() - started, 1)
        report["configs"][name] = summary
        print(
            f"{name}: {summary.get('steady_tokens_per_s')} tok/s steady ({summary['tokens_per_s']} overall), "
            f"{summary.get('steady_s_per_step')} s/step, peak RSS {summary['peak_rss_mb']:.0f} MB, "
            f"precision {summary['precision']}"
        )
    q, b = report["configs"].get("qlora-nf4", {}), report["configs"].get("lora-bf16", {})
    if len(profiles) > 1:
        first = report["configs"].get(f"{profiles[0]}/{configs[0]}", {})
        report["ratios"] = {
            f"{name} / {profiles[0]}": {
                "steady_tokens_per_s": round(c["steady_tokens_per_s"] / first["steady_tokens_per_s"], 3),
                "peak_rss": round(c["peak_rss_mb"] / first["peak_rss_mb"], 3),
            }
            for name, c in report["configs"].items()
            if c.get("steady_tokens_per_s") and first.get("steady_tokens_per_s") and name.endswith(configs[0])
        }
        print(report["ratios"])
    elif q.get("steady_tokens_per_s") and b.get("steady_tokens_per_s"):
        report["ratios"] = {
            "tokens_per_s (qlora/bf16)": round(q["steady_tokens_per_s"] / b["steady_tokens_per_s"], 3),
            "peak_rss (qlora/bf16)": round(q["peak_rss_mb"] / b["peak_rss_mb"], 3),
        }
        print(report["ratios"])
    finish_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
