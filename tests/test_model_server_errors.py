"""Errors of the embedded server: 422s, 429 under a cap, 503 before load, bad adapters at start.

Every error is JSON {"error", "error_type"} as TGI sends it, never a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fixtures.model import server_env
from huggingface_hub import InferenceClient
from huggingface_hub.errors import OverloadedError

pytestmark = pytest.mark.slow

PROMPT = "<|im_start|>user\nTell me a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n"


def assert_tgi_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type
    assert "Traceback" not in body["error"]
    return body


def test_503_until_the_model_is_loaded(base_model_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from candor.model_server.app import create_app
    from candor.settings import load_settings

    settings = load_settings(base_model_path=base_model_dir, model_server_threads=1)
    app = create_app(settings, load=False)
    client = TestClient(app)
    health = client.get("/health")
    assert health.status_code == 503 and health.json() == {"error": "unhealthy", "error_type": "healthcheck"}
    assert_tgi_error(client.post("/generate", json={"inputs": "Hi"}), 503, "unhealthy")
    assert_tgi_error(client.post("/tokenize", json={"inputs": "Hi"}), 503, "unhealthy")
    assert client.post("/generate", json={"inputs": "Hi"}).headers["retry-after"] == "5"
    assert client.get("/info").status_code == 200  # info needs no weights
    app.state.engine.load()
    try:
        assert client.get("/health").status_code == 200
        out = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
        assert out.status_code == 200 and out.json()["generated_text"]
    finally:
        app.state.engine.stop()


def test_validation_errors(model_server) -> None:
    url = model_server.url
    long_input = "word " * 3000
    body = assert_tgi_error(
        httpx.post(url + "/generate", json={"inputs": long_input, "parameters": {"max_new_tokens": 2}}),
        422,
        "validation",
    )
    assert "must be <= 1536" in body["error"]
    body = assert_tgi_error(
        httpx.post(url + "/generate", json={"inputs": "word " * 1000, "parameters": {"max_new_tokens": 1500}}),
        422,
        "validation",
    )
    assert "`max_new_tokens` must be <= 2048" in body["error"]
    assert_tgi_error(httpx.post(url + "/generate", json={"inputs": ""}), 422, "validation")
    assert_tgi_error(httpx.post(url + "/generate", json={"parameters": {}}), 422, "validation")
    assert_tgi_error(
        httpx.post(url + "/generate", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation",
    )
    assert_tgi_error(
        httpx.post(url + "/v1/chat/completions", json={"messages": [], "max_tokens": 2}), 422, "validation"
    )
    assert_tgi_error(
        httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "n": 2}),
        422,
        "validation",
    )
    assert_tgi_error(
        httpx.post(
            url + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        ),
        422,
        "validation",
    )
    assert_tgi_error(httpx.get(url + "/nowhere"), 404, "not_found")
    assert_tgi_error(httpx.get(url + "/generate"), 405, "method_not_allowed")


def test_429_beyond_the_concurrency_cap_and_the_slot_comes_back(model_server_factory) -> None:
    server = model_server_factory(
        args=["--max-concurrent-requests", "1"], env={"CANDOR_MODEL_SERVER_ADMIN_TOKEN": "s3"}
    )
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 300}}
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=120) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith("data:{")
        busy = httpx.post(server.url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}})
        assert assert_tgi_error(busy, 429, "overloaded")["error"] == "Model is overloaded"
        with pytest.raises(OverloadedError):
            InferenceClient(base_url=server.url).text_generation("Hi", max_new_tokens=1)
    # The client left mid-stream: its request is cancelled and its slot freed.
    for _ in range(40):
        ok = httpx.post(server.url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}})
        if ok.status_code == 200:
            break
        httpx.get(server.url + "/health")  # let the server notice the disconnect
    assert ok.status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'tgi_request_failure_total{err="overloaded"}' in metrics
    # admin routes need the token when one is set
    unauth = httpx.post(server.url + "/adapters", json={"name": "a", "path": "/nowhere"})
    assert_tgi_error(unauth, 401, "unauthorized")
    wrong_path = httpx.post(
        server.url + "/adapters", json={"name": "a", "path": "/nowhere"}, headers={"Authorization": "Bearer s3"}
    )
    assert_tgi_error(wrong_path, 422, "validation")


def _run_cli(base_model_dir: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "candor.cli.main", "model-server", "--port", "9", *args],
        cwd=tmp_path,
        env=server_env(base_model_dir, tmp_path / "var"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_adapters_stop_the_server_before_it_binds(base_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path):
    missing = _run_cli(base_model_dir, tmp_path, "--adapter", f"x={tmp_path / 'none'}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    malformed = _run_cli(base_model_dir, tmp_path, "--adapter", "no-path-given")
    assert malformed.returncode == 2 and "name=path" in malformed.stderr

    other = tmp_path / "for-360m"
    shutil.copytree(tiny_adapter_dir, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    refused = _run_cli(base_model_dir, tmp_path, "--adapter", f"other={other}")
    assert refused.returncode == 2
    assert "SmolLM2-360M-Instruct" in refused.stderr and "--allow-base-mismatch" in refused.stderr
    no_model = subprocess.run(
        [sys.executable, "-m", "candor.cli.main", "model-server", "--port", "9"],
        cwd=tmp_path,
        env=server_env(tmp_path / "no-model", tmp_path / "var"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert no_model.returncode == 1 and "candor model prepare" in no_model.stderr


def test_override_flag_loads_a_mismatched_adapter(model_server_factory, tiny_adapter_dir: Path, tmp_path: Path):
    other = tmp_path / "for-360m"
    shutil.copytree(tiny_adapter_dir, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    server = model_server_factory(adapters={"other": other}, args=["--allow-base-mismatch"])
    listed = httpx.get(server.url + "/adapters").json()["adapters"]
    assert listed[0]["name"] == "other" and listed[0]["base_model"] == "HuggingFaceTB/SmolLM2-360M-Instruct"
