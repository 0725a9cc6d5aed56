"""Ingest throughput on SQuAD train paragraphs, beside raw sentence-transformers encode of the same chunks.

    nice -n 10 python bench/bench_ingest.py [--paragraphs PATH] [--out bench/results/ingest.json]

Both sides run in the same process with the same model, threads and batch size:
the full ingest (load, hash, manifest, split, embed, Chroma writes) of a fresh
collection, and `SentenceTransformer.encode` of exactly the texts that ingest
embeds (chunk + title), once before and once after the ingest (the mean is
used). Their ratio is the pipeline's overhead over the bare model. Model
loading is excluded from both (it is reported separately), and a second ingest
of the unchanged file measures the incremental no-op.
Not a test: nothing is asserted; the JSON records the figures and the machine state.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from common import RESULTS, squad_paragraphs_jsonl, write_json

REPO = Path(__file__).resolve().parents[1]


def machine_state() -> dict:
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "nice": os.nice(0),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--paragraphs", type=Path, default=None, help="JSONL to ingest; default: the train split of CANDOR_DATA_SOURCE."
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.json")
    parser.add_argument("--data-dir", type=Path, default=REPO / "var" / "bench" / "ingest")
    args = parser.parse_args(argv)

    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.paragraphs = args.paragraphs or squad_paragraphs_jsonl("train", args.data_dir.parent / "ingest-squad")
    os.environ["CANDOR_DATA_DIR"] = str(args.data_dir)
    from candor.ingest.chunking import build_splitter, to_llama_document
    from candor.ingest.embedder import get_embed_model
    from candor.ingest.fingerprint import current_fingerprint
    from candor.ingest.loaders import load_paths
    from candor.ingest.pipeline import ingest_paths
    from candor.settings import load_settings

    settings = load_settings()
    t0 = time.perf_counter()
    model = get_embed_model(settings)  # pins torch threads (settings.torch_threads)
    load_s = time.perf_counter() - t0
    state_before = machine_state()

    # exactly the texts the ingest embeds (chunk + title), split the same way
    from llama_index.core.schema import MetadataMode

    docs = load_paths([args.paragraphs]).documents
    t0 = time.perf_counter()
    nodes = build_splitter(settings, current_fingerprint(settings))([to_llama_document(d) for d in docs])
    split_s = time.perf_counter() - t0
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    st = model._model  # the SentenceTransformer inside llama-index's HuggingFaceEmbedding

    def raw_encode() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        st.encode(texts, batch_size=settings.embed_batch_size, normalize_embeddings=True, show_progress_bar=False)
        return time.perf_counter() - t, time.process_time() - c

    # raw encode before and after the ingest: the machine is shared, so bracket the ingest
    encode_before_s, encode_before_cpu = raw_encode()
    t0, c0 = time.perf_counter(), time.process_time()
    report = ingest_paths(settings, [args.paragraphs], "bench-train")
    ingest_s, ingest_cpu = time.perf_counter() - t0, time.process_time() - c0
    if not report.ok:
        print(report.summary(), file=sys.stderr)
        return 1
    encode_after_s, encode_after_cpu = raw_encode()
    encode_s = (encode_before_s + encode_after_s) / 2
    encode_cpu = (encode_before_cpu + encode_after_cpu) / 2

    t0 = time.perf_counter()
    noop = ingest_paths(settings, [args.paragraphs], "bench-train")
    noop_s = time.perf_counter() - t0

    ingest_rate = report.chunks_added / ingest_s
    encode_rate = len(texts) / encode_s
    result = {
        "benchmark": "ingest",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": str(args.paragraphs),
        "documents": report.new,
        "chunks": report.chunks_added,
        "chunks_encoded_raw": len(texts),
        "chunk_size": settings.chunk_size,
        "chunk_overlap": settings.chunk_overlap,
        "embed_batch_size": settings.embed_batch_size,
        "ingest_batch_docs": settings.ingest_batch_docs,
        "chroma": "embedded PersistentClient",
        "model_load_s": round(load_s, 2),
        "ingest_s": round(ingest_s, 2),
        "ingest_chunks_per_s": round(ingest_rate, 2),
        "raw_encode_s": round(encode_s, 2),
        "raw_encode_before_after_s": [round(encode_before_s, 2), round(encode_after_s, 2)],
        "raw_encode_chunks_per_s": round(encode_rate, 2),
        "ingest_over_raw_ratio": round(ingest_rate / encode_rate, 3),
        "cpu_seconds": {
            "why": "CPU time of this process: far less sensitive than wall time to other load on shared cores",
            "ingest": round(ingest_cpu, 2),
            "raw_encode_mean": round(encode_cpu, 2),
            "ingest_chunks_per_cpu_s": round(report.chunks_added / ingest_cpu, 2),
            "raw_encode_chunks_per_cpu_s": round(len(texts) / encode_cpu, 2),
            "ingest_over_raw_ratio": round((report.chunks_added / ingest_cpu) / (len(texts) / encode_cpu), 3),
        },
        "split_only_s": round(split_s, 2),
        "reingest_unchanged_s": round(noop_s, 2),
        "reingest_unchanged_chunks_added": noop.chunks_added,
        "threads": state_before,
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    write_json(args.out, result, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
