"""The distributed configuration of docker/compose.yaml (profile cpu) end to end, without containers.

Every part is a real process on loopback, configured the way compose.yaml configures its container:
PostgreSQL (the CI server, a fresh database), a `chroma run` server, the `model-prepare` job
(`candor-volumes prepare`, the base model step skipped: the test cache holds it), the `migrate` job
(`candor db upgrade`), the embedded model server with the shipped adapter under its stable name
`refusal`, and the API under uvicorn (`candor serve`, the image's command) with the environment
compose.yaml gives api-cpu (deploy_env.compose_service_env: hosts rewritten to 127.0.0.1, the
`/models` and `/adapters` volumes to local folders, `/data` to a folder per container). Only the
listen address and port of the API are set here, as a port mapping would. Then the flow an operator
and a user go through, over HTTP: keys and ingest with the CLI (as `$C exec api-cpu candor ...`),
a document added over the API, a question, its row in Postgres, a flag, a review, the export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from deploy_env import compose_service_command, compose_service_env
from fixtures.api import COLLECTION, HANDBOOK
from fixtures.core import REPO_ROOT
from fixtures.ingest import stop_process
from fixtures.model import ModelServerProcess, free_port, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CANDOR = Path(sys.executable).with_name("candor")
VOLUMES = REPO_ROOT / "docker" / "volumes.py"
BUNDLED_MODELS = REPO_ROOT / "models"  # the model-server image copies it to /opt/candor/models
SHIPPED_ADAPTER = BUNDLED_MODELS / "candor-refusal"
# Tuning knobs compose.yaml passes through from .env: short answers, one torch thread, and
# grounding recorded but not enforced, so only the retrieval gate and the model can refuse.
TUNING = {"CANDOR_MAX_NEW_TOKENS": "24", "CANDOR_TORCH_THREADS": "1", "CANDOR_GROUNDING_ENFORCE": "false"}
RUNTIME_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}

ONCALL = {
    "id": "ops/on-call.md",
    "title": "On-call rotation",
    "text": "# On-call rotation\n\nThe Candor on-call rotation changes every Tuesday at 09:00 UTC. Pages go to "
    "the alias candor-oncall; the secondary engineer is paged when a page is not acknowledged within "
    "15 minutes.",
}
QUESTION = "When does the Candor on-call rotation change?"
LOGGED = "question, collection, answer, api_key_id, adapter, adapter_version"


def _host_env(env: dict[str, str]) -> dict[str, str]:
    """A container's environment on this host: the outer one without CANDOR_*, then the given one."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CANDOR_")}
    return {**clean, **RUNTIME_ENV, **env}


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(argv, env=_host_env(env), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{argv[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@dataclass
class Deployment:
    api: ModelServerProcess  # a server process with a log: the API under uvicorn
    api_env: Callable[[Path], dict[str, str]]  # what compose gives an api-cpu container with /data at a folder
    database_url: str
    chroma_url: str
    work: Path

    def cli(self, *args: str) -> str:
        """`candor ARGS` in a fresh api-cpu container (`$C run --rm api-cpu ARGS`)."""
        data = self.work / f"cli-{len(list(self.work.glob('cli-*')))}"
        data.mkdir()
        return _run([str(CANDOR), *args], self.api_env(data), data)


@pytest.fixture
def deployment(
    tmp_path: Path,
    fresh_database: dict[str, str | int],
    chroma_server: str,
    base_model_dir: Path,
    model_server_factory: Callable[..., ModelServerProcess],
) -> Iterator[Deployment]:
    variables = {k: str(v) for k, v in fresh_database.items() if k != "port"} | TUNING
    volumes = {"/models/base": base_model_dir, "/models": tmp_path / "models", "/adapters": tmp_path / "adapters"}

    def paths(data: Path) -> dict[str, Path]:
        return {**volumes, "/data": data}

    # model-prepare: fills the models and adapters volumes (the base model is the test cache's).
    prepare = compose_service_command("model-prepare", "cpu", paths=volumes)
    prepare_env = compose_service_env("model-prepare", "cpu", paths=paths(tmp_path / "prepare-data"))
    out = _run(
        [sys.executable, str(VOLUMES), *prepare, "--skip-base", "--bundled", str(BUNDLED_MODELS)], prepare_env, tmp_path
    )
    assert "embedder exported" in out and "adapter seeded" in out, out

    # migrate: the schema, since the API containers do not migrate (CANDOR_DATABASE_AUTO_MIGRATE=false).
    ports = {"postgres": int(fresh_database["port"]), "chroma": urlsplit(chroma_server).port}
    migrate_env = compose_service_env("migrate", "cpu", ports=ports, variables=variables, paths=paths(tmp_path))
    assert compose_service_command("migrate", "cpu") == ["db", "upgrade"]
    _run([str(CANDOR), "db", "upgrade"], migrate_env, tmp_path)

    # model-server: its command and environment from compose; loopback and a free port instead of 0.0.0.0:8080.
    command = compose_service_command("model-server", "cpu", paths=volumes)
    assert command[:2] == ["model-server", "--adapter"], command
    server_env = compose_service_env(
        "model-server", "cpu", variables={"CANDOR_MODEL_SERVER_THREADS": "1"}, paths=paths(tmp_path / "ms-data")
    )
    model_server = model_server_factory(args=command[1:], env=server_env)
    ports["model-server"] = model_server.port

    def api_env(data: Path) -> dict[str, str]:
        return compose_service_env("api", "cpu", ports=ports, variables=variables, paths=paths(data))

    # api-cpu: the image's command, `candor serve`, with compose's environment.
    port, api_data = free_port(), tmp_path / "api-data"
    api_data.mkdir()
    env = {**api_env(api_data), "CANDOR_API_HOST": "127.0.0.1", "CANDOR_API_PORT": str(port)}
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(CANDOR), "serve"], cwd=api_data, env=_host_env(env), stdout=log, stderr=subprocess.STDOUT
        )
    api = ModelServerProcess(url=f"http://127.0.0.1:{port}", port=port, process=proc, log_path=log_path)
    try:
        wait_healthy(api, path="/readyz", name="the API")  # what compose's depends_on + HEALTHCHECK wait for
        yield Deployment(api, api_env, migrate_env["CANDOR_DATABASE_URL"], chroma_server, tmp_path)
    finally:
        stop_process(proc)
        model_server.stop()  # its own, not the session's: free the memory now


def _export(client: httpx.Client, admin: str) -> list[dict]:
    resp = client.get("/v1/feedback/export", headers={"Authorization": f"Bearer {admin}"})
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def test_ingest_chat_flag_export_across_postgres_chroma_and_a_model_server(deployment: Deployment) -> None:
    import chromadb
    from sqlalchemy import create_engine, text

    from candor.model_server.adapters import adapter_version

    d = deployment
    env = d.api_env(d.work / "api-data")
    assert env["CANDOR_DATABASE_AUTO_MIGRATE"] == "false" and env["CANDOR_LLM_ADAPTER"] == "refusal"
    assert env["CANDOR_DATABASE_URL"] == d.database_url and env["CANDOR_CHROMA_URL"] == d.chroma_url

    # The operator: keys and the handbook with the CLI, in containers of the API's image.
    admin = json.loads(d.cli("keys", "create", "ops", "--role", "admin", "--json"))
    user = json.loads(d.cli("keys", "create", "alice", "--role", "user", "--json"))
    assert admin["trusted"] is True and user["trusted"] is False
    report = json.loads(d.cli("ingest", str(HANDBOOK), "--collection", COLLECTION, "--json", "--no-progress"))
    assert report["ok"] and report["new"] == 7 and report["chunks_added"] > 0, report

    as_admin, as_user = ({"Authorization": f"Bearer {k['secret']}"} for k in (admin, user))
    with httpx.Client(base_url=d.api.url, timeout=300) as client:
        ready = client.get("/readyz").json()
        assert ready["checks"] == {"chroma": "ok", "database": "ok", "model_server": "ok"}, ready

        # One more document, over the API, into the same collection on the Chroma server.
        resp = client.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": [ONCALL]}, headers=as_admin)
        assert resp.status_code == 201, resp.text
        assert resp.json()["new"] == 1 and resp.json()["unchanged"] == 0, resp.json()
        assert COLLECTION in client.get("/v1/collections", headers=as_user).json()["collections"]

        # The user asks; the answer comes from the document added over the API, via the model server.
        resp = client.post("/v1/chat", json={"question": QUESTION, "collection": COLLECTION}, headers=as_user)
        assert resp.status_code == 200, resp.text + d.api.log()[-3000:]
        body = resp.json()
        assert body["refused"] is False and body["answer"].strip(), body
        assert body["citations"] and body["citations"][0]["doc_id"] == ONCALL["id"], body["citations"]
        assert "Tuesday" in body["citations"][0]["snippet"]
        expected_version = adapter_version(SHIPPED_ADAPTER)
        assert body["model"]["adapter"] == "refusal" and body["model"]["adapter_version"] == expected_version
        answer_id = body["answer_id"]

        flag = client.post(
            f"/v1/answers/{answer_id}/feedback",
            json={"verdict": "hallucination", "correction": "Every Tuesday at 09:00 UTC."},
            headers=as_user,
        )
        assert flag.status_code == 201, flag.text
        assert flag.json()["review_status"] == "pending", "an untrusted key's flag waits for review"
        flag_id = flag.json()["feedback_id"]
        assert answer_id not in [r["answer_id"] for r in _export(client, admin["secret"])]

        # The admin approves it with the CLI; now the export carries it.
        d.cli("feedback", "review", flag_id, "--approve", "--reviewer", "ops")
        rows = [r for r in _export(client, admin["secret"]) if r["answer_id"] == answer_id]

    # The answer log is the Postgres database compose points at, not a SQLite file in /data.
    engine = create_engine(d.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(f"select {LOGGED} from answers where id = :i"),
                {"i": answer_id},
            ).one()
            top = conn.execute(
                text("select doc_id from answer_chunks where answer_id = :i order by rank limit 1"), {"i": answer_id}
            ).scalar_one()
            flags = conn.execute(
                text("select id, verdict, review_status from flags where answer_id = :i"), {"i": answer_id}
            ).all()
    finally:
        engine.dispose()
    assert tuple(row) == (QUESTION, COLLECTION, body["answer"], user["id"], "refusal", expected_version)
    assert top == ONCALL["id"]
    assert [tuple(f) for f in flags] == [(flag_id, "hallucination", "approved")]
    assert not list(d.work.rglob("candor.db")), "no process fell back to SQLite"

    # The vectors are on the Chroma server, not in an embedded store in any /data folder.
    chroma = chromadb.HttpClient(host="127.0.0.1", port=urlsplit(d.chroma_url).port)
    manifest = chroma.get_collection(f"{COLLECTION}.manifest").get(where={"doc_id": ONCALL["id"]})
    assert len(manifest["ids"]) == 1
    assert not list(d.work.rglob("chroma.sqlite3")), "no process fell back to embedded Chroma"

    # The export, over the API and with the CLI, carries the flagged answer with its exact context.
    assert len(rows) == 1, rows
    exported = rows[0]
    assert (exported["flag_id"], exported["verdict"], exported["review_status"]) == (
        flag_id,
        "hallucination",
        "approved",
    )
    assert exported["question"] == QUESTION and exported["answer"] == body["answer"]
    assert exported["correction"] == "Every Tuesday at 09:00 UTC."
    assert exported["contexts"][0]["doc_id"] == ONCALL["id"]
    assert (exported["adapter"], exported["adapter_version"]) == ("refusal", expected_version)
    cli_rows = [json.loads(line) for line in d.cli("feedback", "export", "--out", "-").splitlines() if line.strip()]
    assert [r for r in cli_rows if r["answer_id"] == answer_id] == rows
