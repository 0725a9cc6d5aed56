"""Contract: huggingface_hub's InferenceClient (the TGI client) against `candor model-server`.

Real HTTP, real model, a real subprocess: the calls a user would make to TGI.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

pytestmark = pytest.mark.slow

PROMPT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def adapter_server(tiny_adapter_server):
    return tiny_adapter_server


def test_text_generation_plain_and_with_details(model_server) -> None:
    client = InferenceClient(base_url=model_server.url)
    assert client.text_generation(PROMPT, max_new_tokens=20) == "The capital of France is Paris."
    out = client.text_generation(PROMPT, max_new_tokens=20, details=True, top_n_tokens=3, decoder_input_details=True)
    d = out.details
    assert out.generated_text == "The capital of France is Paris."
    assert d.finish_reason == "eos_token" and d.generated_tokens == len(d.tokens) == 8
    assert d.tokens[-1].special and d.tokens[-1].text == "<|im_end|>"
    assert all(t.logprob <= 0 for t in d.tokens)
    assert len(d.prefill) > 10 and d.prefill[0].logprob is None
    first_top = d.top_tokens[0]
    assert len(first_top) == 3 and first_top[0]["id"] == d.tokens[0].id  # greedy: the top alternative
    assert d.seed is None  # greedy


def test_text_generation_stream(model_server) -> None:
    client = InferenceClient(base_url=model_server.url)
    pieces = list(client.text_generation(PROMPT, max_new_tokens=20, stream=True))
    assert "".join(p for p in pieces if p != "<|im_end|>") == "The capital of France is Paris."
    events = list(client.text_generation(PROMPT, max_new_tokens=4, stream=True, details=True))
    assert [e.index for e in events] == [0, 1, 2, 3]
    assert all(e.generated_text is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == "The capital of France" and last.details.finish_reason == "length"
    assert last.details.generated_tokens == 4 and last.details.input_length > 10


def test_raw_routes_shapes(model_server) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}
    root = httpx.post(model_server.url + "/", json=body, timeout=60)
    assert root.status_code == 200 and isinstance(root.json(), list) and len(root.json()) == 1
    gen = httpx.post(model_server.url + "/generate", json=body, timeout=60).json()
    assert gen == root.json()[0] == {"generated_text": "The capital of"}
    with httpx.stream("POST", model_server.url + "/generate_stream", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert len(lines) == 3 and all(line.startswith("data:{") for line in lines)
    assert not any("[DONE]" in line for line in lines)
    stop = httpx.post(
        model_server.url + "/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 20, "stop": [" France"], "details": True}},
        timeout=60,
    ).json()
    assert stop["generated_text"] == "The capital of France"  # TGI keeps the stop sequence
    assert stop["details"]["finish_reason"] == "stop_sequence"
    full = httpx.post(
        model_server.url + "/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "return_full_text": True}},
        timeout=60,
    ).json()
    assert full["generated_text"] == PROMPT + "The capital"


def test_chat_completion_and_stream(model_server) -> None:
    client = InferenceClient(base_url=model_server.url)
    out = client.chat_completion(MESSAGES, max_tokens=20, temperature=0, logprobs=True, top_logprobs=2)
    choice = out.choices[0]
    assert choice.message.content == "The capital of France is Paris."
    assert choice.finish_reason == "stop"
    assert out.usage.completion_tokens == 8 and out.usage.prompt_tokens > 10
    assert len(choice.logprobs.content[0].top_logprobs) == 2
    chunks = list(client.chat_completion(MESSAGES, max_tokens=20, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The capital of France is Paris."
    assert chunks[-1].choices[0].finish_reason == "stop"
    with httpx.stream(
        "POST",
        model_server.url + "/v1/chat/completions",
        json={"messages": MESSAGES, "max_tokens": 3, "stream": True, "temperature": 0},
        timeout=60,
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_chat_stop_is_cut_as_openai_does(model_server) -> None:
    client = InferenceClient(base_url=model_server.url)
    out = client.chat_completion(MESSAGES, max_tokens=20, temperature=0, stop=[" Paris"])
    assert out.choices[0].message.content == "The capital of France is"
    chunks = list(client.chat_completion(MESSAGES, max_tokens=20, temperature=0, stop=[" Paris"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The capital of France is"
    # which stop string ended it, as vLLM says (the LLM client's finish reason reads it), streamed or not
    body = {"messages": MESSAGES, "max_tokens": 20, "temperature": 0, "stop": [" Paris"]}
    whole = httpx.post(model_server.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert whole["choices"][0]["stop_reason"] == " Paris"
    sse = httpx.post(model_server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60).text
    events = [json.loads(line[5:]) for line in sse.splitlines() if line.startswith("data:") and "[DONE]" not in line]
    assert events[-1]["choices"][0]["stop_reason"] == " Paris" and events[0]["choices"][0]["stop_reason"] is None


def test_openai_completions_route(model_server) -> None:
    r = httpx.post(
        model_server.url + "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 20, "temperature": 0, "logprobs": 2},
        timeout=60,
    ).json()
    choice = r["choices"][0]
    assert choice["text"] == "The capital of France is Paris." and choice["finish_reason"] == "stop"
    assert len(choice["logprobs"]["top_logprobs"][0]) == 2


def test_info_models_tokenize_metrics(model_server) -> None:
    info = httpx.get(model_server.url + "/info").json()
    assert info["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info["max_input_tokens"] < info["max_total_tokens"] and info["router"] == "candor-embedded"
    models = httpx.get(model_server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == info["model_id"]
    tokens = httpx.post(model_server.url + "/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["text"] for t in tokens] == ["Hello", " world"]
    assert tokens[1]["start"] == 5 and tokens[1]["stop"] == 11
    metrics = httpx.get(model_server.url + "/metrics").text
    assert "tgi_request_count_total" in metrics and "candor_model_generated_tokens_total" in metrics
    assert "candor_model_ready 1.0" in metrics


def test_adapter_selection_changes_output_only_when_selected(model_server, adapter_server) -> None:
    base = InferenceClient(base_url=model_server.url)
    tuned = InferenceClient(base_url=adapter_server.url)
    plain = base.text_generation(PROMPT, max_new_tokens=12)
    assert tuned.text_generation(PROMPT, max_new_tokens=12) == plain  # no adapter_id: the base model
    with_adapter = tuned.text_generation(PROMPT, max_new_tokens=12, adapter_id="tiny")
    assert with_adapter != plain
    chat = tuned.chat_completion(MESSAGES, model="tiny", max_tokens=12, temperature=0)
    assert chat.choices[0].message.content != "The capital of France is Paris."
    assert chat.model == "tiny"
    with pytest.raises(ValidationError, match="'nope' is not loaded"):
        tuned.text_generation(PROMPT, max_new_tokens=2, adapter_id="nope")
    listed = httpx.get(adapter_server.url + "/adapters").json()
    assert [a["name"] for a in listed["adapters"]] == ["tiny"] and len(listed["adapters"][0]["version"]) == 16
    ids = [m["id"] for m in httpx.get(adapter_server.url + "/v1/models").json()["data"]]
    assert ids[1:] == ["tiny"]


def test_hot_load_and_replace_an_adapter(adapter_server, base_model_dir: Path, tmp_path: Path) -> None:
    from fixtures.model import make_tiny_adapter

    fresh = make_tiny_adapter(base_model_dir, tmp_path / "fresh", seed=11)
    client = InferenceClient(base_url=adapter_server.url)
    with pytest.raises(ValidationError):
        client.text_generation(PROMPT, max_new_tokens=4, adapter_id="fresh")
    r = httpx.post(adapter_server.url + "/adapters", json={"name": "fresh", "path": str(fresh)}, timeout=120)
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    out = client.text_generation(PROMPT, max_new_tokens=12, adapter_id="fresh")
    assert out != client.text_generation(PROMPT, max_new_tokens=12)
    listed = {a["name"]: a["version"] for a in httpx.get(adapter_server.url + "/adapters").json()["adapters"]}
    assert listed["fresh"] == version
    assert httpx.delete(adapter_server.url + "/adapters/fresh").status_code == 204
    assert httpx.delete(adapter_server.url + "/adapters/fresh").status_code == 404
    bad = httpx.post(adapter_server.url + "/adapters", json={"name": "x", "path": str(tmp_path / "none")})
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation"
