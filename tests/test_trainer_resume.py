"""A training run killed (SIGKILL) right after a checkpoint resumes from that step and finishes.

The real 135M base, the real trainer (``candor.finetune.train`` on ``transformers.Trainer``), in a child
process that is killed as soon as a complete checkpoint folder appears; the same command again continues.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fixtures.finetune as ft_fixtures
import pytest

from candor.prompts import REFUSAL_SENTENCE, ContextChunk, build_messages

ft_base_model = ft_fixtures.ft_base_model

pytestmark = pytest.mark.slow

MAX_STEPS = 6
CHILD = """
import json, sys
from candor.finetune.train import TrainConfig, train
from candor.settings import Settings
cfg = TrainConfig(**json.loads(sys.argv[1]))
train(cfg, Settings(), resume=True, progress=False)
"""


def _train_file(path: Path) -> Path:
    ctx = [ContextChunk("Zorvia's capital is Lumen. The bridge was built in 1911.", "Zorvia")]
    rows = [
        build_messages("What is the capital of Zorvia?", ctx, answer="Lumen"),
        build_messages("Who founded Zorvia?", ctx, answer=REFUSAL_SENTENCE),
        build_messages("When was the bridge built?", ctx, answer="1911"),
        build_messages("Who built the bridge?", ctx, answer=REFUSAL_SENTENCE),
    ]
    path.write_text("".join(json.dumps({"category": "t", "messages": m}) + "\n" for m in rows))
    return path


def _complete_checkpoints(ckdir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in ckdir.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def test_a_run_killed_at_a_checkpoint_resumes_from_its_step_and_finishes(ft_base_model, tmp_path, settings) -> None:
    from candor.finetune.train import TrainConfig, train

    out = tmp_path / "run"
    knobs = dict(
        output_dir=str(out), train_file=str(_train_file(tmp_path / "train.jsonl")), base_model_path=str(ft_base_model),
        quantization="none", per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=MAX_STEPS,
        save_steps=2, save_total_limit=2, logging_steps=1, lora_r=4, lora_alpha=8, lora_layers=2, warmup_steps=2,
        distill_lambda=1.0, kl_tokens="all", teacher="snapshot", snapshot_steps=1,
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(knobs)], env=env, stderr=subprocess.PIPE)
    ckdir = out / "checkpoints"
    deadline = time.monotonic() + 300
    while not _complete_checkpoints(ckdir):
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    killed_at = _complete_checkpoints(ckdir)[-1]
    assert 2 <= killed_at < MAX_STEPS  # killed mid-run, right after a checkpoint
    assert not (out / "train_summary.json").exists()

    summary = train(TrainConfig(**knobs), settings, progress=False)  # the same command again
    assert summary["resumed_from"] == str(ckdir / f"checkpoint-{killed_at}")
    assert summary["steps"] == MAX_STEPS and summary["stop_reason"] == "max_steps"
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))  # every step once: none redone, none lost
    assert _complete_checkpoints(ckdir)[-1] == MAX_STEPS
    assert (ckdir / f"checkpoint-{MAX_STEPS}" / "teacher_snapshot.pt").exists()  # the snapshot teacher carried on
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    again = train(TrainConfig(**knobs), settings, progress=False)  # a finished run trains nothing more
    assert again["steps"] == MAX_STEPS
    assert len((out / "train_log.jsonl").read_text().splitlines()) == MAX_STEPS
