"""Flags under concurrency, across processes: 200 concurrent submissions to `candor serve
--workers 4`, on SQLite (WAL, busy_timeout) and on Postgres. No "database is locked", no 5xx,
and the flag rows in the database equal the acknowledged submissions.

Then a flag flood: 500 flags from one key enter training capped by the pipeline's per-key
limit (``candor.retrain.poisoning.screen_flags``).
"""

from __future__ import annotations

import asyncio
import os

import pytest
from fixtures.store import answer_record
from reliability_helpers import count_rows, running_api, settings_env

pytestmark = pytest.mark.slow

FLAGS = int(os.environ.get("CANDOR_TEST_CONCURRENT_FLAGS", "200"))
WORKERS = 4
VERDICTS = ("hallucination", "correct", "should_have_refused")  # those that apply to a given answer


def seed(settings, n: int) -> tuple[str, list[str]]:
    """A user key and ``n`` answers of that key, written through the store."""
    from candor.feedback.store import AnswerStore

    store = AnswerStore(settings)
    store.migrate()
    key_id, secret = store.create_key("flagger", role="user", trusted=True)
    ids = []
    for i in range(n):
        ids.append(store.log_answer(answer_record(question=f"Question number {i}?", api_key_id=key_id)))
    store.close()
    return secret, ids


async def flag_all(url: str, secret: str, answer_ids: list[str]) -> list[tuple[int, str]]:
    import httpx

    limits = httpx.Limits(max_connections=len(answer_ids), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = asyncio.Event()

        async def one(i: int, answer_id: str) -> tuple[int, str]:
            await start.wait()
            body = {"verdict": VERDICTS[i % 3], "comment": f"concurrent flag {i}"}
            if i % 3 == 0:
                body["correction"] = "Rollo."
            r = await client.post(
                f"/v1/answers/{answer_id}/feedback", json=body, headers={"Authorization": f"Bearer {secret}"}
            )
            return r.status_code, r.text

        tasks = [asyncio.create_task(one(i, a)) for i, a in enumerate(answer_ids)]
        await asyncio.sleep(0.1)
        start.set()
        return await asyncio.gather(*tasks)


def run_concurrent_flags(tmp_path, base_model_dir, database_url: str | None) -> None:
    from candor.settings import load_settings

    data_dir = tmp_path / "var"
    settings = load_settings(data_dir=data_dir, database_url=database_url)
    secret, ids = seed(settings, FLAGS)
    env = settings_env(
        data_dir=data_dir,
        database_url=database_url,
        chroma_path=data_dir / "chroma",
        base_model_path=base_model_dir,
        llm_url="http://127.0.0.1:9",  # not used: flags never generate
        rate_limit_per_minute=100_000,
        db_pool_size=10,
    )
    with running_api(tmp_path / "api", env, workers=WORKERS) as api:
        results = asyncio.run(flag_all(api.url, secret, ids))
        log = api.log()
    statuses = [s for s, _ in results]
    acked = statuses.count(201)
    assert not [r for r in results if r[0] >= 500], [r for r in results if r[0] >= 500][:5]
    assert "database is locked" not in log.lower() and "database is locked" not in " ".join(t for _, t in results)
    assert acked == FLAGS, {s: statuses.count(s) for s in set(statuses)}
    rows = count_rows(settings.resolved_database_url)
    assert rows["flags"] == acked and rows["answers"] == FLAGS
    assert log.count("Application startup complete") >= WORKERS  # really four processes served


def test_200_concurrent_flags_across_4_workers_on_sqlite(tmp_path, base_model_dir):
    run_concurrent_flags(tmp_path, base_model_dir, None)


@pytest.mark.postgres
def test_200_concurrent_flags_across_4_workers_on_postgres(tmp_path, base_model_dir, postgres_url):
    run_concurrent_flags(tmp_path, base_model_dir, postgres_url)


def test_a_flag_flood_from_one_key_enters_training_capped(settings):
    """500 flags from one key on answers seeded through the store: the screen keeps at most the cap."""
    from candor.feedback.store import AnswerStore
    from candor.retrain.loop_params import PoisoningParams
    from candor.retrain.poisoning import screen_flags

    store = AnswerStore(settings)
    store.migrate()
    flood_id, _ = store.create_key("flooder", role="user", trusted=True)
    honest_id, _ = store.create_key("honest", role="user", trusted=True)
    for i in range(500):
        a = store.log_answer(answer_record(question=f"Flooded question {i}?", api_key_id=flood_id))
        store.add_feedback(a, "hallucination", api_key_id=flood_id, trusted=True)
    for i in range(5):
        a = store.log_answer(answer_record(question=f"Honest question {i}?", api_key_id=honest_id))
        store.add_feedback(a, "should_have_refused", api_key_id=honest_id, trusted=True)
    rows = list(store.export_flags())
    assert len(rows) == 505  # all reached the export: the cap is the pipeline's, not the API's

    params = PoisoningParams()
    screened = screen_flags(rows, params)
    kept_by = screened.per_key
    assert kept_by[flood_id]["seen"] == 500
    assert kept_by[flood_id]["kept"] == params.max_flags_per_key < 500
    assert kept_by[honest_id]["kept"] == 5, "honest flags are not crowded out by the flood"
    over = [d for d in screened.dropped if d["reason"] == "over_key_cap"]
    assert len(over) == 500 - params.max_flags_per_key
    store.close()
