"""Answer-log latency and write throughput, SQLite beside Postgres.

    nice -n 10 python bench/bench_store.py [--postgres-url URL] [--out bench/results/store.json]

Per backend, on a fresh database: sequential log_answer (4 chunks each, the
shape the answer core logs), get_answer, a 50-answer list page, sequential
flags, then concurrent flags from 4 processes x 8 threads (the API's 4 uvicorn
workers) and the export of every flag. The Postgres side runs when a URL is given
(or CANDOR_TEST_POSTGRES_URL is set: `eval "$(.ci/postgres.sh)"`); it uses a
fresh schema and drops it afterwards. Not a test: nothing is asserted; the JSON
records the figures and the machine state.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(statistics.median(s) * 1000, 3),
        "p95_ms": round(s[int(0.95 * (len(s) - 1))] * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
    }


def _timed(fn: Any, n: int) -> tuple[list[float], list[Any]]:
    times, results = [], []
    for i in range(n):
        t0 = time.perf_counter()
        results.append(fn(i))
        times.append(time.perf_counter() - t0)
    return times, results


def _flag_worker(args: tuple[str, str, list[str], str, int]) -> tuple[int, int]:
    from candor.feedback.store import AnswerStore
    from candor.settings import Settings

    data_dir, url, answer_ids, key_id, threads = args
    store = AnswerStore(Settings(data_dir=data_dir, database_url=url))
    ok = failed = 0

    def one(answer_id: str) -> bool:
        try:
            store.add_feedback(answer_id, "hallucination", comment="bench", api_key_id=key_id)
            return True
        except Exception:
            return False

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for good in pool.map(one, answer_ids):
            ok, failed = ok + good, failed + (not good)
    store.close()
    return ok, failed


def bench_backend(settings: Any, n: int, flags_per_worker: int) -> dict[str, Any]:
    from fixtures.store import answer_record

    from candor.feedback.store import AnswerStore

    store = AnswerStore(settings)
    t0 = time.perf_counter()
    store.migrate()
    out: dict[str, Any] = {"migrate_s": round(time.perf_counter() - t0, 3)}
    log_t, ids = _timed(lambda i: store.log_answer(answer_record(question=f"question {i}")), n)
    out["log_answer"] = _ms(log_t)
    out["get_answer"] = _ms(_timed(lambda i: store.get_answer(ids[i]), n)[0])
    out["list_answers_page50"] = _ms(_timed(lambda i: store.list_answers(limit=50), 50)[0])
    out["add_feedback_sequential"] = _ms(_timed(lambda i: store.add_feedback(ids[i], "hallucination"), n)[0])

    workers, threads = 4, 8
    extra = [store.log_answer(answer_record(question=f"c{i}")) for i in range(flags_per_worker)]
    keys = [store.create_key(f"bench{w}", "user", None, True)[0] for w in range(workers)]
    url = settings.resolved_database_url
    jobs = [(str(settings.data_dir), url, extra, keys[w], threads) for w in range(workers)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(_flag_worker, jobs)
    wall = time.perf_counter() - t0
    ok = sum(r[0] for r in results)
    out["concurrent_flags"] = {
        "processes": workers,
        "threads_each": threads,
        "acknowledged": ok,
        "failed": sum(r[1] for r in results),
        "wall_s_incl_process_start": round(wall, 3),
        "flags_per_s": round(ok / wall, 1),
    }
    t0 = time.perf_counter()
    rows = sum(1 for _ in store.export_flags())
    out["export"] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 3)}
    store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=os.environ.get("CANDOR_TEST_POSTGRES_URL"))
    parser.add_argument("--n", type=int, default=300, help="Sequential operations of each kind.")
    parser.add_argument("--flags-per-worker", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "store.json")
    parser.add_argument("--data-dir", type=Path, default=REPO / "var" / "bench" / "store")
    args = parser.parse_args(argv)

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from candor.settings import Settings

    shutil.rmtree(args.data_dir, ignore_errors=True)
    result: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "nice": os.nice(0),
            "python": platform.python_version(),
        },
        "params": {"n": args.n, "flags_per_worker": args.flags_per_worker},
    }
    result["sqlite"] = bench_backend(Settings(data_dir=args.data_dir / "sqlite"), args.n, args.flags_per_worker)
    if args.postgres_url:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(args.postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            pg = Settings(data_dir=args.data_dir / "pg", database_url=url.render_as_string(hide_password=False))
            result["postgres"] = bench_backend(pg, args.n, args.flags_per_worker)
            result["postgres"]["note"] = "throwaway cluster from .ci/postgres.sh (fsync=off)"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    write_json(args.out, result, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
