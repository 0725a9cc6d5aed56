"""The Trainer-based loop against the hand-written one it replaced: same losses, same cost.

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 taskset -c 0 python bench/bench_trainer_equivalence.py \
        --old-rev 22c2484 [--steps 5] [--train-file var/bench/trainer-eq/data/train.jsonl]

The old loop is read from git (``finetune/{collate,distill,train}.py`` at ``--old-rev``, the last commit
with the hand-written ``train``) into the child process that runs it, so the comparison can be rerun after
the old loop is gone. Every run is its own process (peak RSS is that run's alone), one after another.

- ``equivalence``: the tests' tiny data set (4 examples) with the batch holding all of them, so both loops see
  the same batch every step whatever their sampler; LoRA dropout 0 (the two loops draw random numbers in a
  different order). Two configurations: nf4 with the base model as teacher (KL on answerable rows), and
  fp32 with a snapshot teacher taken at step 2 (KL on all rows, warm-up then cosine). Per step: loss, ce,
  kl, lr, grad norm of both, and the largest difference. The library's sampler puts a batch's rows in
  another order than the old one did (longest first); ``new-same-order`` runs the new loop with the old
  loop's row order (a sampler replaying ``length_grouped_batches`` from ``--old-rev``), to separate the
  loss's maths from the summation order (Adam's first steps turn float noise in near-zero gradients into
  full-size updates, so row order alone moves the losses by a percent or two).
- ``throughput``: the shipped recipe's loss and LoRA (params.yaml train) on real examples
  (``candor finetune build-data`` from squad2-train10), a few steps of batch 2 x 2 accumulation: tokens/s
  and peak RSS. The two samplers order batches differently, so tokens per step differ a little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from common import RESULTS, finish_report, report_header

REPO = Path(__file__).resolve().parents[1]
LOOPS = ("old", "new", "new-same-order")

TINY_ROWS = [
    ("What is the capital of Zorvia?", "Zorvia's capital is Lumen.", "Zorvia", "Lumen"),
    ("Who founded Zorvia?", "Zorvia's capital is Lumen.", "Zorvia", None),
    ("Who built the Brasko bridge?", None, None, None),
    ("When was the bridge built?", "The bridge was built in 1911.", "Brasko", "1911"),
]
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-nf4-base-teacher": dict(
        quantization="nf4", per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=2e-3,
        warmup_steps=0, lr_scheduler_type="constant", lora_dropout=0.0, lora_r=8, lora_alpha=16,
        distill_lambda=0.5, kl_tokens="answerable", teacher="base",
    ),
    "tiny-fp32-snapshot-teacher": dict(
        quantization="none", per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-3,
        warmup_steps=2, lr_scheduler_type="cosine", lora_dropout=0.0, lora_r=4, lora_alpha=8, first_token_weight=2.0,
        distill_lambda=1.0, kl_tokens="all", teacher="snapshot", snapshot_steps=2,
    ),
    "recipe-nf4-throughput": dict(
        quantization="nf4", per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-4,
        warmup_steps=10, lr_scheduler_type="cosine", lora_r=16, lora_alpha=32, lora_layers=16, max_length=448,
        first_token_weight=2.0, distill_lambda=1.0, kl_tokens="answerable", teacher="base", limit_examples=64,
    ),
}  # fmt: skip


def _tiny_file(path: Path) -> Path:
    from candor.prompts import REFUSAL_SENTENCE, ContextChunk, build_messages

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i, (q, text, title, answer) in enumerate(TINY_ROWS):
            chunks = [ContextChunk(text, title)] if text else []
            m = build_messages(q, chunks, answer=answer or REFUSAL_SENTENCE)
            fh.write(json.dumps({"id": str(i), "category": "t", "messages": m}) + "\n")
    return path


def _load_old_loop(rev: str) -> types.ModuleType:
    """The hand-written loop as it was at ``rev``, with the collate and distill modules it was written against."""
    import candor.finetune  # noqa: F401  (the package the old modules live in)

    module = None
    for name in ("collate", "distill", "train"):
        source = subprocess.run(
            ["git", "show", f"{rev}:finetune/{name}.py"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        module = types.ModuleType(f"candor.finetune.{name}")
        module.__file__ = f"{rev}:finetune/{name}.py"
        sys.modules[module.__name__] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    assert module is not None
    return module


def _replay_old_order(rev: str) -> None:
    """Make the new loop's sampler yield the rows in the old loop's order (``length_grouped_batches`` at ``rev``)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:finetune/collate.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    old = types.ModuleType("old_collate")
    sys.modules[old.__name__] = old
    exec(compile(source, f"{rev}:finetune/collate.py", "exec"), old.__dict__)
    from candor.finetune.trainer import CandorTrainer

    class OldOrder:
        def __init__(self, lengths: list[int], batch: int, seed: int) -> None:
            self.lengths, self.batch, self.seed, self.epoch = lengths, batch, seed, 0

        def __len__(self) -> int:
            return len(self.lengths)

        def __iter__(self):
            batches = old.length_grouped_batches(self.lengths, self.batch, self.seed, self.epoch)
            self.epoch += 1
            return iter([i for b in batches for i in b])

    def sampler(self, train_dataset=None):
        rows = train_dataset or self.train_dataset
        return OldOrder([len(r["input_ids"]) for r in rows], self.args.per_device_train_batch_size, self.args.seed)

    CandorTrainer._get_train_sampler = sampler


def one(args: argparse.Namespace) -> int:
    """Child mode: one loop, one configuration; prints its per-step records and summary as JSON."""
    from candor.settings import Settings

    if args.loop == "old":
        mod = _load_old_loop(args.old_rev)
    else:
        import candor.finetune.train as mod

        if args.loop == "new-same-order":
            _replay_old_order(args.old_rev)
    knobs = dict(CONFIGS[args.config])
    tiny = args.config.startswith("tiny")
    out = args.work_dir / args.config / args.loop
    train_file = _tiny_file(args.work_dir / "tiny.jsonl") if tiny else args.train_file
    cfg = mod.TrainConfig(
        output_dir=str(out), train_file=str(train_file), base_model_path=str(args.base_model),
        max_steps=args.steps if tiny else args.throughput_steps, logging_steps=1, save_steps=10_000,
        torch_threads=1, **knobs,
    )  # fmt: skip
    started = time.monotonic()
    summary = mod.train(cfg, Settings(), resume=False, progress=False)
    wall = time.monotonic() - started
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    keep = ("step", "loss", "ce", "kl", "lr", "grad_norm", "tokens", "elapsed_s")
    result = {
        "steps": [{k: r.get(k) for k in keep} for r in steps],
        "tokens_per_s": summary["tokens_per_s"],
        "tokens": summary["tokens"],
        "train_time_s": summary["train_time_s"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "wall_s_including_load": round(wall, 1),
    }
    if len(steps) > 1:
        tok = steps[-1]["tokens"] - steps[0]["tokens"]
        secs = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
        result["steady_tokens_per_s"] = round(tok / secs, 1) if secs > 0 else None
    print(json.dumps(result))
    return 0


def _diff(old: list[dict], new: list[dict]) -> dict[str, float]:
    out = {}
    for key in ("loss", "ce", "kl", "lr", "grad_norm"):
        pairs = [(o.get(key), n.get(key)) for o, n in zip(old, new, strict=False)]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            out[f"max_abs_diff_{key}"] = max(abs(a - b) for a, b in pairs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-rev", default="HEAD")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--throughput-steps", type=int, default=4)
    data = REPO / "var" / "bench" / "trainer-eq" / "data" / "train.jsonl"
    parser.add_argument("--train-file", type=Path, default=data)
    parser.add_argument("--base-model", type=Path, default=REPO / "var" / "models" / "base")
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / "trainer-eq")
    parser.add_argument("--out", type=Path, default=RESULTS / "trainer-equivalence.json")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--loops", nargs="*", default=list(LOOPS), choices=LOOPS)
    parser.add_argument("--merge", action="store_true", help="add to the report at --out instead of replacing it")
    parser.add_argument("--loop", choices=LOOPS, help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop:
        return one(args)
    rev = subprocess.run(["git", "rev-parse", args.old_rev], cwd=REPO, capture_output=True, text=True, check=True)
    report: dict[str, Any] = {
        **report_header({"taskset": "core 0", "note": "core 0 shared with other helpers' work: load as recorded"}),
        "old_loop": f"finetune/train.py at {rev.stdout.strip()} (hand-written)",
        "new_loop": "finetune/train.py + finetune/trainer.py (transformers.Trainer)",
        "configs": {},
    }
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())
        report["configs"] = previous.get("configs", {})
        report["earlier_runs"] = [*previous.get("earlier_runs", []), {"when": previous["when"], **previous["machine"]}]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    for name in args.configs:
        entry: dict[str, Any] = {**report["configs"].get(name, {}), "knobs": CONFIGS[name]}
        for loop in args.loops:
            cmd = [sys.executable, __file__, "--loop", loop, "--config", name, "--old-rev", args.old_rev]
            cmd += ["--steps", str(args.steps), "--throughput-steps", str(args.throughput_steps)]
            cmd += ["--train-file", str(args.train_file), "--base-model", str(args.base_model)]
            cmd += ["--work-dir", str(args.work_dir)]
            load = os.getloadavg()[0]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                entry[loop] = {"error": proc.stderr[-3000:]}
                print(f"{name} {loop}: failed\n{proc.stderr[-3000:]}")
                continue
            entry[loop] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_avg_1m_before": round(load, 2)}
            print(f"{name} {loop}: {entry[loop]['tokens_per_s']} tok/s, peak RSS {entry[loop]['peak_rss_mb']} MB")
        if "steps" in entry.get("old", {}) and "steps" in entry.get("new-same-order", {}):
            entry["comparison_same_row_order"] = _diff(entry["old"]["steps"], entry["new-same-order"]["steps"])
            print(name, "same row order", entry["comparison_same_row_order"])
        if "steps" in entry.get("old", {}) and "steps" in entry.get("new", {}):
            entry["comparison"] = _diff(entry["old"]["steps"], entry["new"]["steps"])
            entry["comparison"]["tokens_per_s (new/old)"] = round(
                entry["new"]["tokens_per_s"] / max(entry["old"]["tokens_per_s"], 1e-9), 3
            )
            entry["comparison"]["peak_rss (new/old)"] = round(
                entry["new"]["peak_rss_mb"] / max(entry["old"]["peak_rss_mb"], 1e-9), 3
            )
            print(name, entry["comparison"])
        report["configs"][name] = entry
    finish_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
