"""The environment compose.yaml gives the containers, used against real servers: a `chroma run`
server and a PostgreSQL server, each on loopback with the hosts rewritten by deploy_env. This is
what proves the file's URLs, credentials and commands work, beyond its schema."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_env import compose_service_env, load_compose

from candor.settings import get_settings, load_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real Chroma server (`chroma run`, as the chroma service runs it) on a free port."""
    port, path = _free_port(), tmp_path / "chroma-data"
    chroma = Path(sys.executable).with_name("chroma")
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not start: {(tmp_path / 'chroma.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield port, path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


@pytest.mark.slow
def test_api_env_reaches_a_real_chroma_server(chroma_server, settings, monkeypatch, tmp_path: Path) -> None:
    from candor.ingest.store import check_chroma, get_client

    port, data = chroma_server
    env = compose_service_env(
        "api",
        "cpu",
        ports={"chroma": port, "postgres": 1, "model-server": 1},
        variables={"POSTGRES_PASSWORD": "unused"},
        paths={"/data": tmp_path / "api-data", "/models": tmp_path / "models"},
    )
    _use_env(monkeypatch, env)
    loaded = load_settings()
    assert loaded.chroma_url == f"http://127.0.0.1:{port}"
    assert check_chroma(loaded) is True  # the code /readyz runs
    client = get_client(loaded)
    name = f"deploy_{uuid.uuid4().hex[:8]}"
    collection = client.create_collection(name, embedding_function=None)
    collection.add(ids=["a"], embeddings=[[0.1, 0.2, 0.3]], documents=["x"])
    assert collection.query(query_embeddings=[[0.1, 0.2, 0.3]], n_results=1)["ids"] == [["a"]]
    assert name in [c.name for c in client.list_collections()]
    assert any(data.iterdir()), "the data landed in the server's folder, not in the API's"
    assert not (tmp_path / "api-data" / "chroma").exists()


@pytest.mark.slow
@pytest.mark.postgres
def test_migration_job_runs_against_postgres_with_the_compose_env(fresh_database, settings, tmp_path: Path) -> None:
    """The `migrate` service's command, with the environment compose gives it, on a real server."""
    from sqlalchemy import create_engine, inspect, text

    variables = {k: str(v) for k, v in fresh_database.items() if k != "port"}
    env = compose_service_env(
        "migrate",
        "cpu",
        ports={"postgres": int(fresh_database["port"])},
        variables=variables,
        paths={"/data": tmp_path / "data"},
    )
    command = load_compose()["services"]["migrate"]["command"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CANDOR_")}
    candor = Path(sys.executable).with_name("candor")
    for _ in range(2):  # idempotent: the job runs at every `docker compose up`
        proc = subprocess.run(
            [str(candor), *command],
            env={**clean, **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already at" in proc.stdout
    engine = create_engine(env["CANDOR_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select current_database()")).scalar() == variables["POSTGRES_DB"]
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert "alembic_version" in tables and len(tables) > 1
    assert not (tmp_path / "data" / "candor.db").exists(), "the answer log went to Postgres, not SQLite"
