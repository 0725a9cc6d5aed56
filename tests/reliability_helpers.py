"""Helpers of the reliability and security tests: real API processes on loopback, row counts.

Plain functions (no fixtures), importable because tests/ is on sys.path. The
API runs as ``python -m candor.cli.main serve`` in its own process group, so a
test can SIGKILL it (and its uvicorn workers) like a crash would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures.model import free_port

START_TIMEOUT_S = float(os.environ.get("CANDOR_TEST_SERVER_TIMEOUT", "240"))


def count_rows(database_url: str) -> dict[str, int]:
    """Rows per table of the answer log, read with a fresh engine (what a restart would see)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            out = {}
            for table in ("answers", "answer_chunks", "flags"):
                out[table] = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            out["failed"] = int(conn.execute(text("SELECT count(*) FROM answers WHERE status = 'failed'")).scalar_one())
            return out
    finally:
        engine.dispose()


def orphan_chunks(database_url: str) -> int:
    """Chunk rows whose answer row is missing: a half-written answer would leave these."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            sql = "SELECT count(*) FROM answer_chunks c LEFT JOIN answers a ON a.id = c.answer_id WHERE a.id IS NULL"
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


@dataclass
class ApiProcess:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (uvicorn's supervisor and its workers): a crash."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def api_env(settings_env: dict[str, str]) -> dict[str, str]:
    """The outer environment without CANDOR_ variables, one torch thread, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDOR_")}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false",
            "CANDOR_TORCH_THREADS": "1",
        }
    )
    env.update(settings_env)
    return env


def wait_http(url: str, process: subprocess.Popen, log: Any, timeout_s: float = START_TIMEOUT_S) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s:\n{log()[-4000:]}")


def start_api(work_dir: Path, settings_env: dict[str, str], workers: int = 1, port: int | None = None) -> ApiProcess:
    """`candor serve` on a loopback port, in its own process group; waits for /healthz."""
    work_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = api_env(settings_env)
    cmd = [sys.executable, "-m", "candor.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--log-level", "info"]
    log_path = work_dir / f"api-{port}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=work_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    api = ApiProcess(f"http://127.0.0.1:{port}", port, process, log_path, env)
    try:
        wait_http(api.url + "/healthz", process, api.log)
        if workers > 1:
            _wait_workers(api, workers)
    except BaseException:
        api.kill()
        raise
    return api


def _wait_workers(api: ApiProcess, workers: int) -> None:
    """uvicorn's supervisor answers as soon as one worker is up; wait until all have started."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if api.log().count("Application startup complete") >= workers:
            return
        time.sleep(0.25)


@contextmanager
def running_api(work_dir: Path, settings_env: dict[str, str], workers: int = 1) -> Iterator[ApiProcess]:
    api = start_api(work_dir, settings_env, workers=workers)
    try:
        yield api
    finally:
        api.stop()


def settings_env(**values: Any) -> dict[str, str]:
    """CANDOR_ variables from keyword settings (None values are left out)."""
    return {f"CANDOR_{k.upper()}": str(v) for k, v in values.items() if v is not None}


def serve_env(data_dir: Path, chroma_path: Path, base_model_dir: Path, llm_url: str, **values: Any) -> dict[str, str]:
    """``settings_env`` of an API over ``data_dir`` and ``chroma_path`` using the model server at ``llm_url``."""
    return settings_env(
        data_dir=data_dir, chroma_path=chroma_path, base_model_path=base_model_dir, llm_url=llm_url, **values
    )


def trusted_key_header(data_dir: Path, name: str, role: str = "user") -> dict[str, str]:
    """Migrate the answer log under ``data_dir``, create a trusted key there; its Authorization header."""
    from candor.feedback.store import AnswerStore
    from candor.settings import load_settings

    store = AnswerStore(load_settings(data_dir=data_dir))
    try:
        store.migrate()
        _, secret = store.create_key(name, role=role, trusted=True)
    finally:
        store.close()
    return {"Authorization": f"Bearer {secret}"}


def sqlite_log_url(data_dir: Path) -> str:
    """The database URL of the default SQLite answer log under ``data_dir``."""
    return f"sqlite:///{(data_dir / 'candor.db').resolve()}"


def harness_on(tmp_path: Path, chroma_path: Path, llm_url: str, base_model_dir: Path, shared: Any, **extra: Any):
    """Like fixtures.api.make_harness, but over a Chroma folder of the test's own.

    The session's embedder and tokenizer are reused: the new Retriever only points at
    another Chroma folder, so no model loads twice.
    """
    from fastapi.testclient import TestClient
    from fixtures.api import ApiHarness, SharedModels, api_settings_for, build_test_services

    from candor.ingest.retriever import Retriever
    from candor.service.api import create_app

    settings = api_settings_for(tmp_path / "var", chroma_path, llm_url, base_model_dir, **extra)
    retriever = Retriever(settings)
    retriever._model, retriever._model_id = shared.retriever._model, shared.retriever._model_id
    services = build_test_services(settings, SharedModels(retriever=retriever, renderer=shared.renderer))
    _, admin = services.store.create_key("admin", role="admin", trusted=True)
    user_id, user = services.store.create_key("user", role="user", trusted=False)
    client = TestClient(create_app(settings, services=services), raise_server_exceptions=False)
    return ApiHarness(client, services, settings, admin, user, user_id)


def ingest_folder(root: Path, files: dict[str, str | bytes], collection: str, chroma_path: Path) -> Any:
    """Write ``files`` under ``root`` and ingest them into ``collection`` of an embedded Chroma."""
    from candor.ingest.pipeline import ingest_paths
    from candor.settings import load_settings

    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    settings = load_settings(data_dir=chroma_path.parent, chroma_path=chroma_path, chroma_url=None)
    report = ingest_paths(settings, [root], collection)
    assert report.ok and report.failed == 0, report.to_dict()
    return report


def start_model_server_on(port: int, base_model_dir: Path, work_dir: Path, wait: bool = True):
    """`candor model-server` on a given port (to bring a killed one back where the API expects it)."""
    from fixtures.model import ModelServerProcess, server_env, wait_healthy

    work_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "candor.cli.main", "model-server", "--host", "127.0.0.1", "--port", str(port)]
    log_path = work_dir / f"model-server-{port}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=work_dir, env=server_env(base_model_dir, work_dir / "var"), stdout=log, stderr=subprocess.STDOUT
        )
    server = ModelServerProcess(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    if wait:
        try:
            wait_healthy(server)
        except BaseException:
            server.stop()
            raise
    return server


def sse_blocks(lines: Iterator[str]) -> Iterator[tuple[str | None, dict | None]]:
    """(event, data) pairs from an SSE line stream."""
    import json

    event, data = None, None
    for line in lines:
        if not line:
            if event or data is not None:
                yield event, data
            event, data = None, None
        elif line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = json.loads(line.split(":", 1)[1])
    if event or data is not None:
        yield event, data
