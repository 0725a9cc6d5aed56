"""Crashes, with real processes on loopback:

- the model server is SIGKILLed mid-stream: the client gets an SSE error event, the answer is
  logged as failed, /readyz names the model server, and the service answers again once a model
  server is back on its port;
- the API is SIGKILLed mid-request: after a restart the answer log has no half-written rows
  (integrity check, no orphan chunks, every acknowledged answer present and complete);
- the API is SIGKILLed mid-ingest: after a restart, re-posting the same documents converges to
  exactly the chunks a clean ingest produces, and a further re-post changes nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fixtures.api import COLLECTION
from fixtures.model import free_port
from reliability_helpers import (
    count_rows,
    orphan_chunks,
    running_api,
    serve_env,
    sqlite_log_url,
    sse_blocks,
    start_api,
    start_model_server_on,
    trusted_key_header,
)

pytestmark = pytest.mark.slow

LONG_QUESTION = "Explain in detail, step by step, everything the handbook says about how Candor answers questions."
ANSWERABLE = "Which embedding model does Candor use?"
OFF_TOPIC = "What is the boiling point of mercury in kelvin?"


def test_model_server_killed_mid_stream(tmp_path, handbook_chroma, base_model_dir):
    import httpx

    port = free_port()
    server = start_model_server_on(port, base_model_dir, tmp_path / "ms1")
    data_dir = tmp_path / "var"
    hdr = trusted_key_header(data_dir, "user")
    env = serve_env(
        data_dir,
        handbook_chroma,
        base_model_dir,
        server.url,
        llm_retries=0,
        max_new_tokens=400,
        grounding_enforce=False,  # tokens stream as they come (nothing held back)
        min_retrieval_score=0.0,
    )
    revived = None
    try:
        with running_api(tmp_path / "api", env) as api, httpx.Client(base_url=api.url, timeout=120) as client:
            events = []
            body = {"question": LONG_QUESTION, "collection": COLLECTION, "stream": True}
            with client.stream("POST", "/v1/chat", json=body, headers=hdr) as resp:
                assert resp.status_code == 200
                for event, data in sse_blocks(resp.iter_lines()):
                    events.append((event, data))
                    if event == "token" and server.process.poll() is None:
                        os.kill(server.process.pid, signal.SIGKILL)
                        server.process.wait(timeout=10)
            names = [e for e, _ in events]
            assert "token" in names and names[-1] == "error" and "done" not in names, names
            error = events[-1][1]
            assert error["status"] == 503 and error["error"], error

            rows = count_rows(sqlite_log_url(data_dir))
            assert rows["failed"] == 1 and rows["answers"] == 1, rows

            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.headers.get("retry-after")
            checks = ready.json()["checks"]
            assert checks["model_server"].startswith("unavailable") and checks["database"] == "ok"
            assert checks["chroma"] == "ok"
            down = client.post("/v1/chat", json={"question": ANSWERABLE, "collection": COLLECTION}, headers=hdr)
            assert down.status_code == 503 and down.headers.get("retry-after") and down.json()["error"]

            revived = start_model_server_on(port, base_model_dir, tmp_path / "ms2")
            again = client.post("/v1/chat", json={"question": ANSWERABLE, "collection": COLLECTION}, headers=hdr)
            assert again.status_code == 200, again.text
            assert again.json()["timings_ms"]["generation"] > 0
            assert client.get("/readyz").status_code == 200
            rows = count_rows(sqlite_log_url(data_dir))
            assert rows["failed"] == 2 and rows["answers"] == 3, rows
    finally:
        server.stop()
        if revived is not None:
            revived.stop()


def _integrity(data_dir) -> None:
    import sqlite3

    with sqlite3.connect(data_dir / "candor.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        incomplete = conn.execute(
            "SELECT count(*) FROM answers WHERE (status = 'ok' AND answer IS NULL) "
            "OR (status = 'failed' AND error IS NULL)"
        ).fetchone()[0]
        assert incomplete == 0
    assert orphan_chunks(sqlite_log_url(data_dir)) == 0


def test_api_killed_mid_request_leaves_no_half_written_rows(tmp_path, handbook_chroma, model_server, base_model_dir):
    import httpx

    data_dir = tmp_path / "var"
    hdr = trusted_key_header(data_dir, "user")
    env = serve_env(
        data_dir,
        handbook_chroma,
        base_model_dir,
        model_server.url,
        llm_retries=0,
        max_new_tokens=48,
        rate_limit_per_minute=100_000,
    )
    api = start_api(tmp_path / "api", env)
    acked: list[str] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        question = ANSWERABLE if i % 3 == 0 else f"{OFF_TOPIC} ({i})"
        try:
            r = httpx.post(
                api.url + "/v1/chat", json={"question": question, "collection": COLLECTION}, headers=hdr, timeout=60
            )
        except httpx.HTTPError:
            return  # the crash cut it off
        if r.status_code == 200:
            with lock:
                acked.append(r.json()["answer_id"])

    try:
        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(ask, i) for i in range(24)]
            deadline = time.monotonic() + 30
            while len(acked) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            api.kill()  # SIGKILL, with requests still in flight
            for f in futures:
                f.result()
        assert 0 < len(acked) < 24, f"{len(acked)} acknowledged: the kill must land mid-run"
        _integrity(data_dir)
        before = count_rows(sqlite_log_url(data_dir))
        assert before["answers"] >= len(acked)

        api = start_api(tmp_path / "api2", env)
        from candor.feedback.store import AnswerStore
        from candor.settings import load_settings

        store = AnswerStore(load_settings(data_dir=data_dir))
        for answer_id in acked:
            got = store.get_answer(answer_id)
            assert got.status == "ok" and got.answer and got.chunks
        store.close()
        r = httpx.post(api.url + "/v1/chat", json={"question": OFF_TOPIC, "collection": COLLECTION}, headers=hdr)
        assert r.status_code == 200, r.text
        after = count_rows(sqlite_log_url(data_dir))
        assert after["answers"] == before["answers"] + 1
        _integrity(data_dir)
    finally:
        api.stop()


def _docs(n: int) -> list[dict[str, str]]:
    topics = ["invoices", "holidays", "laptops", "parking", "canteen", "security", "travel", "training"]
    return [
        {
            "id": f"policy-{i:04d}.md",
            "title": f"Policy {i}",
            "text": f"Policy {i} covers {topics[i % len(topics)]} for team {i}. "
            + " ".join(
                f"Rule {i}.{j}: item {j} of {topics[(i + j) % len(topics)]} needs form {i * 10 + j}." for j in range(12)
            ),
        }
        for i in range(n)
    ]


def _chunk_ids(chroma_path, collection: str) -> set[str]:
    from candor.ingest import store as chroma_store
    from candor.settings import load_settings

    settings = load_settings(data_dir=chroma_path.parent, chroma_path=chroma_path, chroma_url=None)
    col = chroma_store.get_collection(settings, collection)
    ids = {cid for cid, _ in chroma_store.iter_ids(col, metadata=False)}
    chroma_store.forget_client(settings)
    return ids


def test_api_killed_mid_ingest_then_rerun_converges(tmp_path, base_model_dir):
    import httpx

    from candor.ingest.pipeline import ingest_documents
    from candor.settings import load_settings

    docs = _docs(int(os.environ.get("CANDOR_TEST_CRASH_DOCS", "160")))
    data_dir = tmp_path / "var"
    hdr = trusted_key_header(data_dir, "admin", role="admin")
    env = serve_env(
        data_dir,
        data_dir / "chroma",
        base_model_dir,
        "http://127.0.0.1:9",
        ingest_batch_docs=8,
        max_request_bytes=10_000_000,
    )
    url_path = "/v1/collections/crash/documents"
    api = start_api(tmp_path / "api", env)
    result: dict = {}

    def post() -> None:
        try:
            result["r"] = httpx.post(api.url + url_path, json={"documents": docs}, headers=hdr, timeout=300)
        except httpx.HTTPError as exc:
            result["error"] = exc

    try:
        thread = threading.Thread(target=post)
        thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until some batches are in, then crash
            listed = httpx.get(api.url + "/v1/collections", headers=hdr, timeout=10).json()["collections"]
            if "crash" in listed:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        api.kill()
        thread.join(timeout=60)
        assert "error" in result, "the ingest finished before the kill; raise CANDOR_TEST_CRASH_DOCS"

        api = start_api(tmp_path / "api2", env)
        first = httpx.post(api.url + url_path, json={"documents": docs}, headers=hdr, timeout=600)
        assert first.status_code == 201, first.text
        report = first.json()
        assert report["failed"] == 0
        second = httpx.post(api.url + url_path, json={"documents": docs}, headers=hdr, timeout=600).json()
        assert second["unchanged"] == len(docs) and second["chunks_added"] == 0 and second["new"] == 0, second
    finally:
        api.stop()

    reference = tmp_path / "reference" / "chroma"
    ref_settings = load_settings(data_dir=reference.parent, chroma_path=reference, chroma_url=None, ingest_batch_docs=8)
    clean = ingest_documents(ref_settings, "crash", docs)
    assert clean.new == len(docs)
    assert _chunk_ids(data_dir / "chroma", "crash") == _chunk_ids(reference, "crash")
