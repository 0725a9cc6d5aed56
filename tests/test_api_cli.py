"""`candor serve` as a real process and `candor ask` against it, as the README's demo runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from fixtures.api import COLLECTION
from fixtures.model import free_port

pytestmark = pytest.mark.slow


def candor(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "candor.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def served_api(tmp_path, handbook_chroma, model_server, base_model_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDOR_")}
    env.update(
        CANDOR_DATA_DIR=str(tmp_path / "var"),
        CANDOR_CHROMA_PATH=str(handbook_chroma),
        CANDOR_LLM_URL=model_server.url,
        CANDOR_BASE_MODEL_PATH=str(base_model_dir),
        CANDOR_AUTH_DISABLED="true",
        CANDOR_MAX_NEW_TOKENS="24",
        CANDOR_API_URL=f"http://127.0.0.1:{port}",
        OMP_NUM_THREADS="1",
    )
    log = open(tmp_path / "api.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "candor.cli.main", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the API did not start:\n" + (tmp_path / "api.log").read_text())
            time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        assert "AUTH IS DISABLED" in (tmp_path / "api.log").read_text()


def test_ask_prints_answer_and_sources(served_api):
    out = candor("ask", "Which embedding model does Candor use?", "-c", COLLECTION, "--json", env=served_api)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["answer_id"]
    assert body["citations"] or body["refused"]

    text = candor("ask", "What is the boiling point of mercury?", "-c", COLLECTION, env=served_api)
    assert text.returncode == 0, text.stderr
    assert "I don't know based on the provided documents." in text.stdout
    assert "refused (retrieval_gate)" in text.stdout and "answer_id=" in text.stdout

    streamed = candor("ask", "What is the boiling point of mercury?", "-c", COLLECTION, "--stream", env=served_api)
    assert streamed.returncode == 0 and "I don't know" in streamed.stdout


def test_ask_reports_errors_without_traceback(served_api, tmp_path):
    missing = candor("ask", "hello", "-c", "no-such-collection", env=served_api)
    assert missing.returncode != 0 and "404" in missing.stderr and "Traceback" not in missing.stderr
    env = {**served_api, "CANDOR_API_URL": f"http://127.0.0.1:{free_port()}"}
    down = candor("ask", "hello", env=env)
    assert down.returncode == 4 and "cannot reach the Candor API" in down.stderr and "Traceback" not in down.stderr
