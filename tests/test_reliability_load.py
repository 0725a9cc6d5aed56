"""Load: 50 concurrent clients against `candor serve` (a real process on loopback) on the embedded
stack (real model server, embedded Chroma with the handbook, SQLite), for a bounded time.

GENERATORS of the clients ask handbook questions that reach the model, back to back; the others
ask off-topic questions that the retrieval gate refuses (cheap); clients flag some of their answers.
(A first version sent every 8th request to the model: the clients then piled up on slow
generations, the model server's queue filled and most of those were 503s, which the test counts
as correct behaviour but which left too few real generations to mean anything.) Per-key rate
limits are set above the load. Asserted: no 5xx other than 503, every 503 carries Retry-After,
no 429, at least MIN_GENERATED answers really generated, and the database holds exactly the
acknowledged answers and flags (count = acks).

The load lasts at least CANDOR_TEST_LOAD_SECONDS (default 45) and until every generator has had
its share of MIN_GENERATED answers generated, so the outcome does not depend on how fast this
machine generates under load (a loaded 2-core machine took 70 s for one generation here); a hard
cap (CANDOR_TEST_LOAD_MAX_SECONDS, default 600) fails the test instead of hanging it.
CANDOR_TEST_LOAD_CLIENTS (default 50) sizes it; the issue's full run is 60 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from fixtures.api import COLLECTION
from reliability_helpers import count_rows, running_api, serve_env, trusted_key_header

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("CANDOR_TEST_LOAD_SECONDS", "45"))
CLIENTS = int(os.environ.get("CANDOR_TEST_LOAD_CLIENTS", "50"))
GENERATORS = int(os.environ.get("CANDOR_TEST_LOAD_GENERATORS", "4"))
MIN_GENERATED = int(os.environ.get("CANDOR_TEST_LOAD_MIN_GENERATED", "8"))
MAX_SECONDS = float(os.environ.get("CANDOR_TEST_LOAD_MAX_SECONDS", "600"))
FLAG_EVERY = 10

ANSWERABLE = [
    "Which embedding model does Candor use?",
    "How does Candor decide to refuse a question?",
    "How do I deploy Candor?",
    "What does the Candor API return for a chat request?",
]
OFF_TOPIC = [
    "What is the boiling point of mercury in kelvin?",
    "Who won the 1966 football world cup?",
    "How many moons does Jupiter have?",
    "What is the capital of Mongolia?",
    "How do you bake sourdough bread?",
]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    acked_answers: list[str] = field(default_factory=list)
    generated: int = 0
    flags_acked: int = 0
    missing_retry_after: int = 0
    server_errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def client_loop(client, headers: dict, until, tally: Tally, seed: int, generate: bool) -> None:
    """Ask, and flag every FLAG_EVERY-th answer, while ``until(generated_by_this_client)`` holds."""
    rng = random.Random(seed)
    acks = generated = 0
    while until(generated):
        question = rng.choice(ANSWERABLE if generate else OFF_TOPIC)
        t0 = time.perf_counter()
        r = await client.post("/v1/chat", json={"question": question, "collection": COLLECTION}, headers=headers)
        tally.latencies.append(time.perf_counter() - t0)
        tally.statuses[r.status_code] += 1
        if r.status_code == 503 and "retry-after" not in r.headers:
            tally.missing_retry_after += 1
        if r.status_code >= 500 and r.status_code != 503:
            tally.server_errors.append(f"{r.status_code}: {r.text[:200]}")
        if r.status_code != 200:
            continue
        body = r.json()
        tally.acked_answers.append(body["answer_id"])
        if body["timings_ms"]["generation"] > 0:
            tally.generated += 1
            generated += 1
        acks += 1
        if acks % FLAG_EVERY == 0:
            f = await client.post(
                f"/v1/answers/{body['answer_id']}/feedback", json={"verdict": "correct"}, headers=headers
            )
            tally.statuses[f"flag {f.status_code}"] += 1
            if f.status_code == 201:
                tally.flags_acked += 1
            elif f.status_code >= 500 and f.status_code != 503:
                tally.server_errors.append(f"flag {f.status_code}: {f.text[:200]}")


async def drive(url: str, headers: dict) -> Tally:
    import httpx

    tally = Tally()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as client:
        start = time.monotonic()
        share = -(-MIN_GENERATED // GENERATORS)  # each generator's part of MIN_GENERATED, rounded up
        generators_done = 0

        def elapsed() -> float:
            return time.monotonic() - start

        def generator_until(generated: int) -> bool:
            return elapsed() < MAX_SECONDS and (elapsed() < SECONDS or generated < share)

        def background_until(_generated: int) -> bool:  # the load lasts as long as the generators
            return elapsed() < MAX_SECONDS and (elapsed() < SECONDS or generators_done < GENERATORS)

        async def generator(i: int) -> None:
            nonlocal generators_done
            try:
                await client_loop(client, headers, generator_until, tally, i, True)
            finally:
                generators_done += 1

        await asyncio.gather(
            *(generator(i) for i in range(GENERATORS)),
            *(client_loop(client, headers, background_until, tally, i, False) for i in range(GENERATORS, CLIENTS)),
        )
    return tally


def test_fifty_clients_lose_nothing(tmp_path, handbook_chroma, model_server, base_model_dir):
    from candor.feedback.store import AnswerStore
    from candor.settings import load_settings

    data_dir = tmp_path / "var"
    settings = load_settings(data_dir=data_dir)
    headers = trusted_key_header(data_dir, "load")
    env = serve_env(
        data_dir,
        handbook_chroma,
        base_model_dir,
        model_server.url,
        llm_retries=1,
        max_new_tokens=24,
        rate_limit_per_minute=1_000_000,
    )
    with running_api(tmp_path / "api", env) as api:
        started = time.monotonic()
        tally = asyncio.run(drive(api.url, headers))
        wall = time.monotonic() - started
        log = api.log()

    summary = {
        "clients": CLIENTS,
        "seconds": round(wall, 1),
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        "answers_acked": len(tally.acked_answers),
        "generated": tally.generated,
        "flags_acked": tally.flags_acked,
        "req_per_s": round(sum(v for k, v in tally.statuses.items() if isinstance(k, int)) / wall, 1),
    }
    print("load summary:", json.dumps(summary))
    assert not tally.server_errors, tally.server_errors[:5]
    assert tally.missing_retry_after == 0
    assert tally.statuses[429] == 0, "per-key limits are above the load: a 429 here is a bug"
    assert tally.generated >= MIN_GENERATED, summary
    assert len(tally.acked_answers) >= CLIENTS, summary
    assert "Traceback" not in log, log[-3000:]

    rows = count_rows(settings.resolved_database_url)
    assert rows["answers"] - rows["failed"] == len(tally.acked_answers), (rows, summary)
    assert rows["failed"] == tally.statuses[503], (rows, summary)  # failures are logged as failures
    assert rows["flags"] == tally.flags_acked, (rows, summary)
    store = AnswerStore(settings)
    for answer_id in random.Random(0).sample(tally.acked_answers, min(50, len(tally.acked_answers))):
        assert store.get_answer(answer_id).status == "ok"
    store.close()


def test_over_capacity_is_503_with_retry_after_never_500(
    tmp_path, handbook_chroma, model_server_factory, base_model_dir
):
    """A model server that takes 2 requests at a time, 8 concurrent questions: the rest are 503 + Retry-After."""
    import httpx

    from candor.settings import load_settings

    small = model_server_factory(args=["--max-concurrent-requests", "2", "--max-batch-size", "2"])
    data_dir = tmp_path / "var"
    settings = load_settings(data_dir=data_dir)
    headers = trusted_key_header(data_dir, "burst")
    env = serve_env(
        data_dir,
        handbook_chroma,
        base_model_dir,
        small.url,
        llm_retries=0,
        max_new_tokens=32,
        rate_limit_per_minute=1_000_000,
    )

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=180) as client:
            body = {"question": ANSWERABLE[0], "collection": COLLECTION}
            return await asyncio.gather(*(client.post("/v1/chat", json=body, headers=headers) for _ in range(8)))

    with running_api(tmp_path / "api", env) as api:
        responses = asyncio.run(burst(api.url))
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert codes[200] >= 1 and codes[503] >= 1, codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) > 0 and r.json()["error"]
    rows = count_rows(settings.resolved_database_url)
    assert rows["failed"] == codes[503] and rows["answers"] == 8, rows
