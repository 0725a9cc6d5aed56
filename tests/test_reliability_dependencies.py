"""A dependency is down: the Chroma server (killed mid-run) or the database (unreachable).
Requests get a 503 with Retry-After and a message that says what is down, never a 500;
/readyz names the dependency. The model server is the TGI stub (it is not the subject here).
"""

from __future__ import annotations

import os
import signal

import pytest
from fixtures.api import COLLECTION, SharedModels, api_settings_for
from fixtures.api import HANDBOOK_QUESTION as QUESTION
from fixtures.ingest import start_chroma_server, stop_process
from fixtures.model import free_port
from reliability_helpers import harness_on

pytestmark = pytest.mark.slow


def assert_503(resp, *words: str) -> str:
    assert resp.status_code == 503, (resp.status_code, resp.text[:300])
    assert int(resp.headers["retry-after"]) > 0
    message = resp.json()["error"]
    assert all(w.lower() in message.lower() for w in words), message
    return message


def _chroma_case(tmp_path, stub, base_model_dir, shared_models):
    from fixtures.api import HANDBOOK

    from candor.ingest.pipeline import ingest_paths
    from candor.ingest.store import forget_client
    from candor.settings import load_settings

    proc, url = start_chroma_server(tmp_path / "chroma-server", tmp_path / "chroma.log")
    try:
        ingest_settings = load_settings(data_dir=tmp_path / "ingest", chroma_url=url)
        assert ingest_paths(ingest_settings, [HANDBOOK / "overview.md"], COLLECTION).ok
        forget_client(ingest_settings)
        h = harness_on(tmp_path, tmp_path / "unused", stub.url, base_model_dir, shared_models, chroma_url=url)
        with h.client:
            ok = h.client.post("/v1/chat", json={"question": QUESTION, "collection": COLLECTION}, headers=h.headers())
            assert ok.status_code == 200, ok.text
            assert h.client.get("/readyz").status_code == 200

            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            down = h.client.post("/v1/chat", json={"question": QUESTION, "collection": COLLECTION}, headers=h.headers())
            assert_503(down, "chroma")
            listed = h.client.get("/v1/collections", headers=h.headers())
            assert_503(listed, "chroma")
            ready = h.client.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"]
            checks = ready.json()["checks"]
            assert checks["chroma"].startswith("unavailable"), checks
            assert checks["database"] == "ok" and checks["model_server"] == "ok", checks
            # the answer log still works: reading answers does not need Chroma
            assert h.client.get("/v1/answers", headers=h.headers()).status_code == 200
    finally:
        stop_process(proc)


def test_chroma_server_killed_mid_run_is_503_and_readyz_names_it(tmp_path, stub, base_model_dir, shared_models):
    _chroma_case(tmp_path, stub, base_model_dir, shared_models)


def _dead_database_services(tmp_path, handbook_chroma, llm_url, base_model_dir, shared, auth_disabled: bool):
    from candor.feedback.store import AnswerStore
    from candor.service.deps import Services
    from candor.service.llm_client import LLMClient

    dead = f"postgresql+psycopg://candor@127.0.0.1:{free_port()}/candor"
    settings = api_settings_for(
        tmp_path / "var",
        handbook_chroma,
        llm_url,
        base_model_dir,
        database_url=dead,
        db_connect_timeout_s=2,
        auth_disabled=auth_disabled,
    )
    store = AnswerStore(settings)  # no migrate: the database cannot be reached
    return settings, Services.assemble(settings, store, shared.retriever, LLMClient(settings), shared.renderer)


@pytest.mark.parametrize("auth_disabled", [False, True], ids=["auth", "no-auth"])
def test_database_unreachable_is_503_and_readyz_names_it(
    tmp_path, handbook_chroma, stub, base_model_dir, shared_models: SharedModels, auth_disabled
):
    from fastapi.testclient import TestClient

    from candor.service.api import create_app

    settings, services = _dead_database_services(
        tmp_path, handbook_chroma, stub.url, base_model_dir, shared_models, auth_disabled
    )
    with TestClient(create_app(settings, services=services), raise_server_exceptions=False) as client:
        headers = {"Authorization": "Bearer cnd_some_key"}
        for method, path, body in (
            ("POST", "/v1/chat", {"question": QUESTION, "collection": COLLECTION}),
            ("POST", "/v1/chat", {"question": "What is the boiling point of mercury?", "collection": COLLECTION}),
            ("GET", "/v1/answers", None),
            ("POST", "/v1/answers/01ABC/feedback", {"verdict": "correct"}),
        ):
            resp = client.request(method, path, json=body, headers=headers)
            assert_503(resp, "database")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["database"].startswith("unavailable") and checks["chroma"] == "ok", checks
        assert checks["model_server"] == "ok"
