"""Many writers at once: no "database is locked", every acknowledged write is stored.

Threads share one store (one API worker); processes each own a store (four
uvicorn workers). Both run against SQLite (WAL + busy timeout + BEGIN
IMMEDIATE) and Postgres. Processes are forked (each builds its own store and
connections; nothing of the parent's is used) because spawning re-imports the
stack and costs seconds on a busy two-core machine.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

from fixtures.store import answer_record, flag_worker, migrate_worker
from sqlalchemy import func, select

from candor.feedback.migrate import head_revision
from candor.feedback.models import AnswerRow, FlagRow
from candor.feedback.store import AnswerStore


def _count(store, model) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


def _seed(store, n_answers: int, n_keys: int) -> tuple[list[str], list[str]]:
    keys = [store.create_key(f"k{i}", "user", None, False)[0] for i in range(n_keys)]
    answers = [store.log_answer(answer_record(question=f"q{i}")) for i in range(n_answers)]
    return answers, keys


def test_200_concurrent_flags_and_answers_from_threads(store):
    answers, keys = _seed(store, 100, 2)
    acks, errors = [], []

    def flag(i: int) -> None:
        try:
            acks.append(store.add_feedback(answers[i % 100], "hallucination", api_key_id=keys[i // 100]).id)
        except Exception as exc:
            errors.append(repr(exc))

    def answer(i: int) -> None:
        try:
            acks.append(store.log_answer(answer_record(question=f"new {i}")))
        except Exception as exc:
            errors.append(repr(exc))

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(flag, i) for i in range(200)] + [pool.submit(answer, i) for i in range(50)]
        for f in futures:
            f.result()
    assert errors == []
    assert len(acks) == 250 and len(set(acks)) == 250
    assert _count(store, FlagRow) == 200
    assert _count(store, AnswerRow) == 150


def test_200_concurrent_flags_from_4_processes(store, store_settings):
    answers, keys = _seed(store, 50, 4)
    url = store_settings.resolved_database_url
    jobs = [
        (str(store_settings.data_dir), url, answers, [keys[w]] * len(answers), 8)  # worker w flags with key w
        for w in range(4)
    ]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(flag_worker, jobs)
    errors = [e for r in results for e in r["errors"]]
    acks = [a for r in results for a in r["acks"]]
    assert errors == []
    assert len(acks) == 200 and len(set(acks)) == 200
    assert _count(store, FlagRow) == 200


def test_four_workers_migrating_at_once_migrate_once(store_settings):
    url = store_settings.resolved_database_url
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(migrate_worker, [(str(store_settings.data_dir), url)] * 4)
    head = head_revision()
    assert sorted(results, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str)
    store = AnswerStore(store_settings)
    try:
        assert store.schema_revision() == (head, head)
    finally:
        store.close()
