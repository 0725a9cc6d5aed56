"""Retrieval latency and recall on SQuAD 2.0: the 1,425 dev questions over a train+dev collection.

    nice -n 10 python bench/bench_retrieval.py [--out bench/results/retrieval.json] [--scale 100000]

- latency p50/p95 of ``Retriever.retrieve`` (query embedding + Chroma query) at k=4, the service's
  default, over all 1,425 dev questions; plus the two parts measured apart on a sample;
- recall@1/@4/@10: share of answerable dev questions whose source paragraph (doc_id) is among the
  documents of the top k chunks;
- the same latency at --scale chunks (the real chunks plus synthetic vectors near them: copies of
  real embeddings with noise, so the index is dense where queries land) and against a real
  `chroma run` server (the real chunks copied into it).
Not a test: nothing is asserted; the JSON records the figures, threads and load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, load_avg_1m, percentile, squad_paragraphs_jsonl, squad_questions, write_json

REPO = Path(__file__).resolve().parents[1]
ADD_BATCH = 4000


def pct(values: list[float], p: float) -> float:
    return round(percentile(values, p), 2)


def latency_ms(retriever, questions: list[str], collection: str, k: int) -> dict:
    times = []
    for q in questions:
        t0 = time.perf_counter()
        retriever.retrieve(q, collection, k)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "n": len(times),
        "k": k,
        "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def copy_chunks(src, dst, extra: int = 0, noise: float = 0.35, seed: int = 0) -> int:
    """Copy every chunk (with its embedding) from src to dst, then add ``extra`` synthetic neighbours."""
    import numpy as np

    page = src.get(include=["embeddings", "documents", "metadatas"])
    ids, embs, docs, metas = page["ids"], np.asarray(page["embeddings"]), page["documents"], page["metadatas"]
    for i in range(0, len(ids), ADD_BATCH):
        dst.add(
            ids=ids[i : i + ADD_BATCH],
            embeddings=embs[i : i + ADD_BATCH],
            documents=docs[i : i + ADD_BATCH],
            metadatas=metas[i : i + ADD_BATCH],
        )
    rng = np.random.default_rng(seed)
    for start in range(0, extra, ADD_BATCH):
        n = min(ADD_BATCH, extra - start)
        base = embs[rng.integers(0, len(ids), n)]
        vecs = base + rng.normal(0.0, noise / np.sqrt(embs.shape[1]), size=base.shape)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        dst.add(
            ids=[f"synthetic-{start + j}" for j in range(n)],
            embeddings=vecs.astype(np.float32),
            documents=["synthetic"] * n,
            metadatas=[{"doc_id": f"synthetic#{start + j}", "candor_source": "synthetic"} for j in range(n)],
        )
    return len(ids) + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval.json")
    parser.add_argument("--data-dir", type=Path, default=REPO / "var" / "bench" / "retrieval")
    parser.add_argument("--scale", type=int, default=100_000, help="Chunks in the scale collection (0: skip).")
    parser.add_argument("--no-server", action="store_true", help="Skip the `chroma run` measurement.")
    parser.add_argument("--reuse", action="store_true", help="Keep an existing train+dev collection.")
    args = parser.parse_args(argv)

    if not args.reuse:
        shutil.rmtree(args.data_dir, ignore_errors=True)
    os.environ["CANDOR_DATA_DIR"] = str(args.data_dir)
    from bench_ingest import machine_state

    from candor.ingest import store
    from candor.ingest.pipeline import ingest_paths
    from candor.ingest.retriever import Retriever
    from candor.ingest.writer import CollectionWriter
    from candor.settings import load_settings

    settings = load_settings()
    retriever = Retriever(settings)
    retriever.warm_up()
    threads = machine_state()

    t0 = time.perf_counter()
    work = settings.data_dir / "squad-jsonl"  # only where the source is the official JSON
    files = [squad_paragraphs_jsonl("train", work), squad_paragraphs_jsonl("dev", work)]
    build = ingest_paths(settings, files, "squad")
    build_s = time.perf_counter() - t0
    collection = store.get_collection(settings, "squad")
    n_chunks = collection.count()

    questions = squad_questions("dev")
    texts = [q["question"] for q in questions]
    result: dict = {
        "benchmark": "retrieval",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "collection": {"documents": build.new + build.unchanged, "chunks": n_chunks, "build_s": round(build_s, 1)},
        "questions": len(questions),
        "threads": threads,
    }

    # latency at the service's k, all dev questions
    result["latency_embedded"] = latency_ms(retriever, texts, "squad", settings.top_k)

    # the two parts, apart, on a sample
    model = retriever._model
    emb_ms, query_ms = [], []
    for q in texts[:300]:
        t0 = time.perf_counter()
        vec = model.get_query_embedding(q)
        t1 = time.perf_counter()
        collection.query(query_embeddings=[vec], n_results=settings.top_k, include=["documents", "metadatas"])
        t2 = time.perf_counter()
        emb_ms.append((t1 - t0) * 1000)
        query_ms.append((t2 - t1) * 1000)
    result["parts_ms"] = {
        "n": len(emb_ms),
        "query_embedding_p50": pct(emb_ms, 50),
        "query_embedding_p95": pct(emb_ms, 95),
        "chroma_query_p50": pct(query_ms, 50),
        "chroma_query_p95": pct(query_ms, 95),
    }

    # recall by doc_id on answerable questions
    answerable = [q for q in questions if not q["is_impossible"]]
    hits = {1: 0, 4: 0, 10: 0}
    for q in answerable:
        ranked = [c.doc_id for c in retriever.retrieve(q["question"], "squad", 10)]
        for k in hits:
            hits[k] += q["doc_id"] in ranked[:k]
    result["recall"] = {"answerable_questions": len(answerable)} | {
        f"at_{k}": round(h / len(answerable), 4) for k, h in hits.items()
    }

    # scale point: real chunks + synthetic neighbours
    if args.scale:
        store.drop_collections(settings, "squad-scale")
        writer = CollectionWriter.open(settings, "squad-scale")  # a Candor collection (fingerprint) to query
        t0 = time.perf_counter()
        total = copy_chunks(collection, writer.chunks, extra=max(0, args.scale - n_chunks))
        load_s = time.perf_counter() - t0
        scale = latency_ms(retriever, texts, "squad-scale", settings.top_k)
        scale_hits = sum(
            q["doc_id"] in [c.doc_id for c in retriever.retrieve(q["question"], "squad-scale", 4)] for q in answerable
        )
        result["latency_at_scale"] = scale | {
            "chunks": total,
            "synthetic": total - n_chunks,
            "load_s": round(load_s, 1),
            "recall_at_4": round(scale_hits / len(answerable), 4),
            "note": "synthetic vectors are real chunk embeddings plus Gaussian noise (cosine ~0.94 to their source)",
        }

    if not args.no_server:
        result["latency_server"] = server_latency(settings, collection, retriever, texts)

    result["load_avg_1m_after"] = load_avg_1m()
    write_json(args.out, result, echo=True)
    return 0


def server_latency(settings, collection, retriever, texts: list[str]) -> dict:
    """The same questions against a real `chroma run` server holding the same chunks."""
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.ingest import start_chroma_server, stop_process

    from candor.ingest.retriever import Retriever
    from candor.ingest.writer import CollectionWriter
    from candor.settings import load_settings

    root = Path(settings.data_dir) / "chroma-server"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    proc: subprocess.Popen | None = None
    try:
        proc, url = start_chroma_server(root / "data", root / "server.log")
        remote = load_settings(data_dir=settings.data_dir, chroma_url=url)
        writer = CollectionWriter.open(remote, "squad")
        copy_chunks(collection, writer.chunks)
        remote_retriever = Retriever(remote)
        remote_retriever._model, remote_retriever._model_id = retriever._model, retriever._model_id
        return latency_ms(remote_retriever, texts, "squad", settings.top_k) | {"url": url}
    finally:
        if proc is not None:
            stop_process(proc)


if __name__ == "__main__":
    sys.exit(main())
