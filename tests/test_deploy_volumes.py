"""The container tools: docker/healthcheck.py (the images' HEALTHCHECK) against a real HTTP server,
and docker/volumes.py (the model-prepare job, and publishing a promoted adapter under its stable
name) on real adapter and model files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from fixtures.core import serving, tiny_peft_llama
from safetensors.numpy import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
HEALTHCHECK = REPO_ROOT / "docker" / "healthcheck.py"
VOLUMES = REPO_ROOT / "docker" / "volumes.py"


def _load_volumes():
    spec = importlib.util.spec_from_file_location("candor_volumes", VOLUMES)
    module = importlib.util.module_from_spec(spec)
    sys.modules["candor_volumes"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


volumes = _load_volumes()


def _run(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


# --- healthcheck --------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = 200 if self.path == "/readyz" else 503
        body = json.dumps({"status": "ready" if status == 200 else "not ready"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_port():
    with serving(_Handler) as server:
        yield server.server_address[1]
    server.server_close()


def test_healthcheck_passes_on_2xx_and_ignores_proxies(http_port: int) -> None:
    # A proxy set for the container must not receive the probe (it would fail through this one).
    proc = _run(HEALTHCHECK, "/readyz", env={"CANDOR_API_PORT": str(http_port), "http_proxy": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    assert "HTTP 200" in proc.stdout


def test_healthcheck_fails_on_503_and_says_why(http_port: int) -> None:
    proc = _run(
        HEALTHCHECK,
        "/health",
        "--port-env",
        "CANDOR_MODEL_SERVER_PORT",
        env={"CANDOR_MODEL_SERVER_PORT": str(http_port)},
    )
    assert proc.returncode == 1
    assert "HTTP 503" in proc.stderr and "not ready" in proc.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run(HEALTHCHECK, "readyz", env={"CANDOR_API_PORT": str(port)})
    assert proc.returncode == 1 and "unreachable" in proc.stderr


# --- adapters -------------------------------------------------------------------------------------

LAYER = "base_model.model.model.layers.0.self_attn"


def make_adapter(path: Path, rank: int = 4, seed: int = 0, **config) -> Path:
    """An adapter folder in PEFT's on-disk format (config JSON + safetensors with lora_A/lora_B)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    tensors = {
        f"{LAYER}.q_proj.lora_A.weight": rng.standard_normal((rank, 8)).astype(np.float32),
        f"{LAYER}.q_proj.lora_B.weight": rng.standard_normal((8, rank)).astype(np.float32),
    }
    save_file(tensors, str(path / "adapter_model.safetensors"))
    body = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        **config,
    }
    (path / "adapter_config.json").write_text(json.dumps(body))
    return path


def test_publish_swaps_in_and_keeps_the_previous(tmp_path: Path) -> None:
    dest = tmp_path / "adapters" / "refusal"
    first = volumes.publish_adapter(make_adapter(tmp_path / "v1", seed=1), dest)
    second = volumes.publish_adapter(make_adapter(tmp_path / "v2", seed=2), dest)
    assert first.weights_sha256 != second.weights_sha256
    assert volumes.inspect_adapter(dest).weights_sha256 == second.weights_sha256
    assert volumes.inspect_adapter(dest.with_name("refusal.prev")).weights_sha256 == first.weights_sha256
    # Rollback is publishing .prev back: the two swap places.
    volumes.publish_adapter(dest.with_name("refusal.prev"), dest)
    assert volumes.inspect_adapter(dest).weights_sha256 == first.weights_sha256
    assert volumes.inspect_adapter(dest.with_name("refusal.prev")).weights_sha256 == second.weights_sha256
    assert sorted(p.name for p in dest.parent.iterdir()) == ["refusal", "refusal.prev"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_weights", "TGI and vLLM load only safetensors"),
        ("bin_weights", "no adapter_model.safetensors"),
        ("bad_json", "not valid JSON"),
        ("not_lora", "only LoRA adapters"),
        ("rank", "exceeds the engines' limit 16"),
        ("dora", "DoRA"),
        ("garbage_weights", "not a safetensors file"),
        ("no_lora_tensors", "no lora_A/lora_B tensors"),
    ],
)
def test_a_broken_adapter_is_refused_and_the_live_one_stays(tmp_path: Path, breakage: str, message: str) -> None:
    dest = tmp_path / "adapters" / "refusal"
    live = volumes.publish_adapter(make_adapter(tmp_path / "good"), dest)
    bad = make_adapter(tmp_path / "bad", rank=32 if breakage == "rank" else 4)
    weights, config = bad / "adapter_model.safetensors", bad / "adapter_config.json"
    if breakage in ("no_weights", "bin_weights"):
        weights.unlink()
        if breakage == "bin_weights":
            (bad / "adapter_model.bin").write_bytes(b"pickle")
    elif breakage == "bad_json":
        config.write_text("{not json")
    elif breakage == "not_lora":
        config.write_text(json.dumps({**json.loads(config.read_text()), "peft_type": "IA3"}))
    elif breakage == "dora":
        config.write_text(json.dumps({**json.loads(config.read_text()), "use_dora": True}))
    elif breakage == "garbage_weights":
        weights.write_bytes(b"\xff" * 64)
    elif breakage == "no_lora_tensors":
        save_file({"model.embed_tokens.weight": np.zeros((2, 2), np.float32)}, str(weights))
    proc = _run(VOLUMES, "publish-adapter", str(bad), str(dest))
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert volumes.inspect_adapter(dest).weights_sha256 == live.weights_sha256
    assert not dest.with_name("refusal.prev").exists()
    assert not any(p.name.startswith(".") for p in dest.parent.iterdir()), "no staging left behind"


def test_publish_refuses_to_copy_a_folder_onto_itself(tmp_path: Path) -> None:
    dest = volumes.publish_adapter(make_adapter(tmp_path / "a"), tmp_path / "refusal").path
    proc = _run(VOLUMES, "publish-adapter", str(dest), str(dest))
    assert proc.returncode == 1 and "same folder" in proc.stderr
    assert volumes.is_adapter_dir(dest)


def test_check_adapter_command_prints_the_version_hash(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "a")
    proc = _run(VOLUMES, "check-adapter", str(adapter))
    assert proc.returncode == 0, proc.stderr
    assert volumes.inspect_adapter(adapter).weights_sha256[:16] in proc.stdout


@pytest.mark.slow
def test_an_adapter_saved_by_peft_passes_the_checks(tmp_path: Path) -> None:
    """The checks read PEFT's real output, not only files made to look like it."""
    model = tiny_peft_llama(16, 1, 2, r=8, target_modules="all-linear")
    model.save_pretrained(tmp_path / "peft")
    info = volumes.inspect_adapter(tmp_path / "peft")
    assert info.rank == 8
    # PEFT 0.21 writes "all-linear" out as module paths (model.layers.0.self_attn.q_proj, ...).
    assert {m.rsplit(".", 1)[-1] for m in info.target_modules} >= {"q_proj", "down_proj"}
    assert info.tensors == 2 * 7  # A and B for the seven linear layers of one block


# --- the model-prepare job ---------------------------------------------------------------------------


def test_prepare_exports_the_embedder_and_seeds_the_adapter_once(tmp_path: Path) -> None:
    bundled = tmp_path / "image-models"
    first = make_adapter(bundled / "refusal", seed=1)
    args = [
        "prepare",
        "--skip-base",
        "--embedder-dir",
        str(tmp_path / "models" / "embedder"),
        "--adapter-dir",
        str(tmp_path / "adapters" / "refusal"),
        "--bundled",
        str(bundled),
    ]
    proc = _run(VOLUMES, *args)
    assert proc.returncode == 0, proc.stderr
    assert "embedder exported" in proc.stdout and "adapter seeded" in proc.stdout
    embedder = tmp_path / "models" / "embedder"
    assert (embedder / "modules.json").is_file() and (embedder / "model.safetensors").stat().st_size > 1_000_000
    seeded = volumes.inspect_adapter(tmp_path / "adapters" / "refusal")
    assert seeded.weights_sha256 == volumes.inspect_adapter(first).weights_sha256

    # A later start: a newer adapter was published meanwhile; the bundled one must not replace it.
    newer = volumes.publish_adapter(make_adapter(tmp_path / "promoted", seed=9), tmp_path / "adapters" / "refusal")
    proc = _run(VOLUMES, *args)
    assert proc.returncode == 0, proc.stderr
    assert "embedder kept" in proc.stdout and "adapter kept" in proc.stdout
    assert volumes.inspect_adapter(tmp_path / "adapters" / "refusal").weights_sha256 == newer.weights_sha256


@pytest.mark.parametrize("kind", ["verifier", "reader"])
def test_prepare_seeds_the_bundled_answerability_model_once_beside_the_embedder(tmp_path: Path, kind: str) -> None:
    bundled = tmp_path / "image-models"
    make_adapter(bundled / "refusal", seed=1)
    (bundled / f"candor-{kind}").mkdir(parents=True)
    (bundled / f"candor-{kind}" / f"{kind}.json").write_text(f'{{"format": "candor-{kind}/1"}}')
    (bundled / f"candor-{kind}" / f"{kind}.safetensors").write_bytes(b"bundled")
    args = ["prepare", "--skip-base", "--embedder-dir", str(tmp_path / "models" / "embedder")]
    args += ["--adapter-dir", str(tmp_path / "adapters" / "refusal"), "--bundled", str(bundled)]
    proc = _run(VOLUMES, *args)
    assert proc.returncode == 0, proc.stderr
    seeded = tmp_path / "models" / kind
    assert f"{kind} seeded" in proc.stdout and (seeded / f"{kind}.safetensors").read_bytes() == b"bundled"
    (seeded / f"{kind}.safetensors").write_bytes(b"retrained")  # a newer one: never replaced
    proc = _run(VOLUMES, *args)
    assert f"{kind} kept" in proc.stdout and (seeded / f"{kind}.safetensors").read_bytes() == b"retrained"


def test_prepare_without_a_bundled_adapter_says_what_to_do(tmp_path: Path) -> None:
    proc = _run(
        VOLUMES,
        "prepare",
        "--skip-base",
        "--embedder-dir",
        str(tmp_path / "e"),
        "--adapter-dir",
        str(tmp_path / "a" / "refusal"),
        "--bundled",
        str(tmp_path / "none"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "publish-adapter" in proc.stdout and "no verifier bundled" in proc.stdout
    assert not (tmp_path / "a" / "refusal").exists() and not (tmp_path / "verifier").exists()


def test_prepare_refuses_to_guess_between_bundled_adapters(tmp_path: Path) -> None:
    make_adapter(tmp_path / "b" / "one")
    make_adapter(tmp_path / "b" / "two")
    proc = _run(
        VOLUMES,
        "prepare",
        "--skip-base",
        "--embedder-dir",
        str(tmp_path / "e"),
        "--adapter-dir",
        str(tmp_path / "a" / "refusal"),
        "--bundled",
        str(tmp_path / "b"),
    )
    assert proc.returncode == 1 and "several adapters" in proc.stderr and "--default-adapter" in proc.stderr


def test_prepare_reports_a_failed_base_model_step(tmp_path: Path) -> None:
    """`candor model prepare` failing (here: no such command) stops the job with a non-zero exit."""
    proc = _run(
        VOLUMES,
        "prepare",
        "--embedder-dir",
        str(tmp_path / "e"),
        "--bundled",
        str(tmp_path),
        "--adapter-dir",
        str(tmp_path / "a"),
        env={"PATH": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert "cannot run 'candor'" in proc.stderr and not (tmp_path / "e").exists()
