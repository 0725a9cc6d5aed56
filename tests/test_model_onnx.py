"""The onnxruntime engine (``CANDOR_MODEL_ENGINE=onnxruntime``): the model exported to ONNX, served over HTTP.

Real parts throughout: the prepared SmolLM2 base model, ONNX Runtime GenAI's model builder, a real
`candor model-server` process. Claims tested:
- the float32 export generates, greedy, the same tokens as transformers in float32 (so the engine's
  prefill, per-step append and logits plumbing are right, not only plausible);
- over HTTP, int8: the TGI routes answer with token logprobs, top tokens and prompt details, stop
  sequences end an answer, concurrent requests all finish, an adapter is merged and served (it
  changes the output), and one loaded at run time is exported and served (the hot swap);
- exports are cached: the second call finds the folder without running the builder;
- a bad engine setting is refused with a message, before anything loads.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fixtures.model import Collector

from candor.model_server.model_engine import GenerationJob
from candor.model_server.onnx_engine import OnnxModelEngine, make_engine
from candor.model_server.onnx_export import CONFIG_FILE, ensure_export, export_key
from candor.model_server.sampling import SamplingParams
from candor.prompts import ContextChunk, build_messages
from candor.settings import load_settings

pytestmark = pytest.mark.slow

_NILE = ContextChunk(
    "The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea "
    "and is about 6,650 km long.",
    "Nile",
)
PROMPTS = [
    build_messages("Into which sea does the Nile flow?", [_NILE]),
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
]


@pytest.fixture(scope="module")
def onnx_cache(test_cache_dir: Path) -> Path:
    return (test_cache_dir / "onnx").resolve()


def _generate(engine: OnnxModelEngine, ids: list[int], n: int, adapter: str | None = None) -> list:
    sink = Collector()
    engine.submit(GenerationJob(ids, n, SamplingParams(top_n_tokens=3), adapter=adapter), sink)
    return sink.finished()


def test_float32_export_generates_what_transformers_generates(base_model_dir: Path, onnx_cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    settings = load_settings(
        base_model_path=base_model_dir,
        model_engine="onnxruntime",
        onnx_precision="float32",
        onnx_cache_dir=str(onnx_cache),
        model_server_threads=1,
    )
    engine = make_engine(settings)
    assert isinstance(engine, OnnxModelEngine)
    engine.load()
    try:
        model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32, local_files_only=True)
        for messages in PROMPTS:
            text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = engine.tokenizer(text)["input_ids"]
            events = _generate(engine, ids, 12)
            got = [e.token.id for e in events]
            with torch.inference_mode():
                ref = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
            assert got == ref[: len(got)], (engine.tokenizer.decode(got), engine.tokenizer.decode(ref))
            assert len(got) >= 2
    finally:
        engine.stop()


def test_exports_are_cached(base_model_dir: Path, onnx_cache: Path) -> None:
    first = ensure_export(base_model_dir, onnx_cache, "int8", 1)
    stamp = (first / "model.onnx").stat().st_mtime_ns
    again = ensure_export(base_model_dir, onnx_cache, "int8", 2)
    assert again == first
    assert (again / "model.onnx").stat().st_mtime_ns == stamp  # not rebuilt
    assert (again / CONFIG_FILE).read_text().count('"intra_op_num_threads": 2') == 1  # threads follow the setting
    # the builder took Candor's options: int8 MatMulNBits at accuracy level 4
    import onnx

    graph = onnx.load(str(again / "model.onnx"), load_external_data=False).graph
    quantized = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: a.i for a in n.attribute} for n in quantized]
    # every projection was quantized but the output layer, which stays float32
    assert [n.name for n in graph.node if n.op_type == "MatMul"] == ["/lm_head/MatMul"]
    assert len(quantized) >= 30 * 3
    assert {(a["bits"], a["accuracy_level"]) for a in attrs} == {(8, 4)}
    assert export_key(base_model_dir, None, "int4") != export_key(base_model_dir, None, "int8")
    assert export_key(base_model_dir, "v1", "int8") != export_key(base_model_dir, None, "int8")


@pytest.fixture(scope="module")
def onnx_server(model_server_factory, tiny_adapter_dir: Path, onnx_cache: Path):
    env = {
        "CANDOR_MODEL_ENGINE": "onnxruntime",
        "CANDOR_ONNX_PRECISION": "int8",
        "CANDOR_ONNX_CACHE_DIR": str(onnx_cache),
        "CANDOR_MODEL_SERVER_THREADS": "1",
    }
    return model_server_factory(adapters={"tiny": tiny_adapter_dir}, env=env)


def test_onnx_server_over_http(onnx_server, base_model_dir: Path, test_cache_dir: Path) -> None:
    from fixtures.model import make_tiny_adapter
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
    prompt = tokenizer.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True)
    url = onnx_server.url
    with httpx.Client(timeout=300) as client:
        info = client.get(f"{url}/info").json()
        assert info["model_engine"] == "onnxruntime"
        assert info["model_dtype"] == "onnx int8"
        assert "tiny" in info["adapters"]

        params = {"max_new_tokens": 12, "details": True, "top_n_tokens": 3, "decoder_input_details": True}
        base = client.post(f"{url}/generate", json={"inputs": prompt, "parameters": params})
        assert base.status_code == 200, base.text
        body = base.json()
        tokens = body["details"]["tokens"]
        assert body["generated_text"].strip()
        assert all(t["logprob"] <= 0 for t in tokens)
        assert len(body["details"]["top_tokens"][0]) == 3
        assert len(body["details"]["prefill"]) == len(tokenizer(prompt)["input_ids"])
        assert "Mediterranean" in body["generated_text"]

        tiny = client.post(
            f"{url}/generate", json={"inputs": prompt, "parameters": {**params, "adapter_id": "tiny"}}
        ).json()
        assert tiny["generated_text"] != body["generated_text"]  # the random adapter was merged in

        first_word = body["generated_text"].split()[0]
        stopped = client.post(
            f"{url}/generate",
            json={"inputs": prompt, "parameters": {"max_new_tokens": 12, "stop": [first_word], "details": True}},
        ).json()
        assert stopped["details"]["finish_reason"] == "stop_sequence"

        def one(_: int) -> int:
            r = client.post(f"{url}/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 6}})
            return r.status_code

        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(one, range(3))) == [200, 200, 200]

        with client.stream(
            "POST", f"{url}/generate_stream", json={"inputs": prompt, "parameters": {"max_new_tokens": 6}}
        ) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data:")]
        assert len(events) >= 2

        # a hot swap: a second adapter loaded while serving is exported and served
        other = make_tiny_adapter(base_model_dir, test_cache_dir / "tiny-adapter-r4-std0.3-seed2", seed=2)
        loaded = client.post(f"{url}/adapters", json={"name": "tiny2", "path": str(other)})
        assert loaded.status_code in (200, 201), loaded.text
        swapped = client.post(
            f"{url}/generate", json={"inputs": prompt, "parameters": {**params, "adapter_id": "tiny2"}}
        ).json()
        assert swapped["generated_text"] != tiny["generated_text"]


def test_bad_engine_settings_are_refused(base_model_dir: Path, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "CANDOR_BASE_MODEL_PATH": str(base_model_dir), "CANDOR_MODEL_ENGINE": "tensorrt"}
    done = subprocess.run(
        [sys.executable, "-m", "candor.cli.main", "model-server", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode != 0
    assert "model_engine" in (done.stderr + done.stdout)
    assert "Traceback" not in done.stderr
