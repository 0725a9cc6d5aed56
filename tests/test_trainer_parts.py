"""The trainer's own parts, without a model: the schedule, the device arguments, checkpoints, the step log."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerState


def test_the_schedule_warms_up_then_decays_over_steps_or_the_time_budget() -> None:
    from candor.finetune.trainer import lr_factor

    assert [lr_factor("cosine", 3, s, 0.0) for s in range(3)] == [0.25, 0.5, 0.75]  # (step + 1) / (warmup + 1)
    assert lr_factor("cosine", 0, 5, 0.0) == 1.0 and lr_factor("cosine", 0, 5, 1.0) == pytest.approx(0.0)
    assert lr_factor("cosine", 0, 5, 0.5) == pytest.approx(0.5)
    assert lr_factor("linear", 0, 5, 0.25) == 0.75 and lr_factor("linear", 0, 5, 2.0) == 0.0  # clamped
    assert lr_factor("constant", 0, 5, 0.9) == 1.0


def test_device_arguments_keep_the_recipes_batch_and_follow_the_device() -> None:
    from transformers import TrainingArguments

    from candor.finetune.train import device_arguments

    cpu = device_arguments("cpu", "auto")
    assert cpu["use_cpu"] is True and cpu["bf16"] is False and cpu["optim"] == "adamw_torch"
    cuda = device_arguments("cuda", "auto")
    assert cuda["use_cpu"] is False and cuda["bf16"] is True and cuda["optim"] == "paged_adamw_32bit"
    for args in (cpu, cuda):
        assert not {"per_device_train_batch_size", "gradient_accumulation_steps", "activation_checkpointing"} & set(
            args
        )
    TrainingArguments(output_dir="unused", **cpu)  # names the library knows


def test_last_checkpoint_skips_a_folder_a_kill_left_half_written(tmp_path: Path) -> None:
    from candor.finetune.trainer import last_checkpoint, spent_before

    assert last_checkpoint(tmp_path / "none") is None
    for step, complete in ((2, True), (4, True), (6, False), (10, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            state = {"stateful_callbacks": {"TimeBudget": {"attributes": {"spent_before": step * 1.5}}}}
            (folder / "trainer_state.json").write_text(json.dumps(state))
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # by step number, not by name
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert spent_before(last_checkpoint(tmp_path)) == 6.0 and spent_before(None) == 0.0


def test_the_step_log_is_cut_back_to_the_checkpoint_on_resume(tmp_path: Path) -> None:
    from candor.finetune.trainer import JsonlLog, TimeBudget

    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    log = JsonlLog(path, TimeBudget())
    log.on_train_begin(None, SimpleNamespace(global_step=3), None)  # resumed at step 3: steps 4, 5 are redone
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    state = SimpleNamespace(global_step=4, epoch=1.0, num_input_tokens_seen=100)
    log.on_log(None, state, None, logs={"loss": 0.5, "learning_rate": 1e-4, "grad_norm": 2.0, "ce": 0.4})
    log.on_log(None, state, None, logs={"train_runtime": 3.0})  # the end-of-run metrics are not a step
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["step"] == 4 and last["lr"] == 1e-4 and last["ce"] == 0.4 and last["tokens"] == 100
    assert len(path.read_text().splitlines()) == 4
    log.on_train_begin(None, SimpleNamespace(global_step=0), None)  # a fresh run starts the file
    assert path.read_text() == ""


def test_the_time_budget_stops_and_saves_once_spent() -> None:
    from candor.finetune.trainer import TimeBudget

    state = TrainerState(global_step=1, max_steps=10)
    budget = TimeBudget(minutes=1.0, spent_s=61.0)  # a resumed run that had used it all
    budget.on_train_begin(None, state, None)
    control = budget.on_step_end(None, state, SimpleNamespace(should_save=False, should_training_stop=False))
    assert control.should_save and control.should_training_stop and budget.stopped_early
    assert budget.fraction() > 1.0 and budget.state()["attributes"]["spent_before"] >= 61.0
    free = TimeBudget(minutes=0.0)
    free.on_train_begin(None, state, None)
    control = free.on_step_end(None, state, SimpleNamespace(should_save=False, should_training_stop=False))
    assert not control.should_training_stop and free.fraction() == 0.0


def test_a_checkpoint_saved_before_the_budget_kept_state_resumes_and_saves(tmp_path: Path) -> None:
    """Checkpoints from before TimeBudget kept state lack its entry; the library's save looks it up by name."""
    from candor.finetune.trainer import TimeBudget

    old = TrainerState(global_step=1764, max_steps=1764)
    old.stateful_callbacks = {"TrainerControl": {"args": {}, "attributes": {}}}
    old.save_to_json(str(tmp_path / "trainer_state.json"))
    state = TrainerState.load_from_json(str(tmp_path / "trainer_state.json"))  # what a resume loads
    budget = TimeBudget(minutes=5.0)
    budget.on_train_begin(None, state, None)
    assert isinstance(state.stateful_callbacks["TimeBudget"], dict)  # the lookup the library's save makes
    state.stateful_callbacks["TimeBudget"] = budget.state()
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    assert json.loads((tmp_path / "trainer_state.json").read_text())["stateful_callbacks"]["TimeBudget"]["args"] == {
        "minutes": 5.0
    }
