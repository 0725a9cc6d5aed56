"""Adapter specs, the base-model check, and what a merged adapter does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from candor.model_server.adapters import (
    AdapterError,
    AdapterSpec,
    adapter_version,
    base_model_matches,
    inspect_adapter,
    parse_adapter_specs,
)

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_parse_specs() -> None:
    specs = parse_adapter_specs(["refusal=/a/b", "x=/c,y=/d"])
    assert [(s.name, str(s.path)) for s in specs] == [("refusal", "/a/b"), ("x", "/c"), ("y", "/d")]
    for bad in ("noequals", "=/path", "name=", "bad name=/p", "-x=/p"):
        with pytest.raises(AdapterError):
            parse_adapter_specs([bad])
    with pytest.raises(AdapterError, match="twice"):
        parse_adapter_specs(["a=/p", "a=/q"])


def test_folder_checks(tmp_path: Path) -> None:
    spec = AdapterSpec("a", tmp_path / "missing")
    with pytest.raises(AdapterError, match="does not exist"):
        inspect_adapter(spec, tmp_path, MODEL_ID, False)
    folder = tmp_path / "ad"
    folder.mkdir()
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        inspect_adapter(AdapterSpec("a", folder), tmp_path, MODEL_ID, False)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        inspect_adapter(AdapterSpec("a", folder), tmp_path, MODEL_ID, False)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(AdapterError, match="only LoRA"):
        inspect_adapter(AdapterSpec("a", folder), tmp_path, MODEL_ID, False)


def test_base_model_names_that_match(tmp_path: Path) -> None:
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "candor_model.json").write_text(json.dumps({"model_id": MODEL_ID}))
    assert base_model_matches(str(base), base, MODEL_ID)  # the served directory itself
    copy = tmp_path / "elsewhere"
    shutil.copytree(base, copy)
    assert base_model_matches(str(copy), base, MODEL_ID)  # a copy that says what it is
    assert base_model_matches(MODEL_ID, base, MODEL_ID)
    assert base_model_matches("SmolLM2-135M-Instruct", base, MODEL_ID)
    assert not base_model_matches("HuggingFaceTB/SmolLM2-360M-Instruct", base, MODEL_ID)
    assert not base_model_matches("/gone/models/base", base, MODEL_ID)


@pytest.mark.slow
def test_inspect_real_adapter_and_mismatch(base_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path) -> None:
    info = inspect_adapter(AdapterSpec("tiny", tiny_adapter_dir), base_model_dir, MODEL_ID, False)
    assert info.version == adapter_version(tiny_adapter_dir) and len(info.version) == 16
    assert info.rank == 4 and info.base_model == str(base_model_dir)

    other = tmp_path / "other"
    shutil.copytree(tiny_adapter_dir, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="SmolLM2-360M-Instruct.*--allow-base-mismatch"):
        inspect_adapter(AdapterSpec("other", other), base_model_dir, MODEL_ID, False)
    forced = inspect_adapter(AdapterSpec("other", other), base_model_dir, MODEL_ID, True)
    assert forced.base_model == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert forced.version != info.version  # the config is part of the version


@pytest.mark.slow
def test_merged_copy_changes_only_the_copy(base_model_dir: Path, tiny_adapter_dir: Path) -> None:
    from candor.settings import apply_thread_settings

    apply_thread_settings(1)
    import torch
    from transformers import AutoModelForCausalLM

    from candor.model_server.adapters import build_merged_model

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.bfloat16, local_files_only=True)
    before = base.model.layers[0].self_attn.q_proj.weight.clone()
    merged = build_merged_model(base_model_dir, tiny_adapter_dir, torch.bfloat16)
    assert torch.equal(base.model.layers[0].self_attn.q_proj.weight, before)
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, before)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.slow
def test_merged_shipped_adapter_behaves_like_peft_unmerged(base_model_dir: Path) -> None:
    """Regression: merging into bf16 weights used to erase the refusal adapter's effect."""
    from candor.settings import apply_thread_settings

    apply_thread_settings(1)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from candor.model_server.adapters import build_merged_model
    from candor.prompts import REFUSAL_SENTENCE, ContextChunk, build_messages

    adapter = Path(__file__).resolve().parents[1] / "models" / "candor-refusal"
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    # a prompt on which this adapter refuses and the base model does not (an over-refusal, but distinctive)
    text = "Candor's default embedding model, all-MiniLM-L6-v2, was trained on English text."
    messages = build_messages("Which embedding model does Candor use?", [ContextChunk(text, "FAQ: languages")])
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), return_tensors="pt")

    def greedy(model) -> str:
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        return tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32, local_files_only=True)
    reference = greedy(PeftModel.from_pretrained(base, str(adapter)))
    merged = greedy(build_merged_model(base_model_dir, adapter, torch.bfloat16))
    assert reference.startswith(REFUSAL_SENTENCE[:20])
    assert merged == reference
