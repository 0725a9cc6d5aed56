"""`candor eval --mode rag`: every question through the service's answer core.

What is measured is what is served: a collection holding the train and dev
paragraphs (other articles act as distractors), the service's retriever, its
prompt fitting, a real TGI-protocol model server over HTTP (the embedded one,
started here with the adapters under test unless ``llm_url`` is given), its
refusal policy (retrieval gate, model refusal, grounding check), its answer
log. Results are split by whether retrieval found the gold paragraph: after a
retrieval miss, refusing is the right behaviour even for an answerable question.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from candor.data_source import resolve_data_source, split_path
from candor.decision import MEASURE_ONLY
from candor.errors import UnavailableError
from candor.feedback.store import AnswerStore
from candor.finetune.evaluate import BASE, parse_models, sample_questions
from candor.finetune.metrics import Scored, decision_metrics, exact_match, summarize, token_f1
from candor.finetune.report import write_report
from candor.finetune.run_eval import load_eval_verifier, run_config
from candor.finetune.squad import Corpus, load_squad
from candor.ingest.pipeline import ingest_documents
from candor.ingest.retriever import Retriever
from candor.service.answering import AnswerEngine, AnswerRequest
from candor.service.chat_template import PromptRenderer
from candor.service.llm_client import LLMClient

log = logging.getLogger("candor.finetune.rag")


def ensure_collection(settings, collection: str, corpora: list[Corpus]) -> dict:
    """Ingest every paragraph (idempotent: unchanged documents are skipped by the pipeline)."""
    docs = [
        {"id": p.doc_id, "text": p.text, "title": p.title}
        for c in corpora
        for p in sorted(c.paragraphs.values(), key=lambda p: p.doc_id)
    ]
    report = ingest_documents(settings, collection, docs)
    return report.to_dict()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def model_server(settings, adapters: dict[str, str], log_path: Path, threads: int = 1, timeout_s: float = 600):
    """Start `candor model-server` with the adapters; yield its URL; stop it."""
    import httpx

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "candor.cli.main",
        "model-server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    env = dict(
        os.environ,
        CANDOR_DATA_DIR=str(settings.data_dir),
        CANDOR_BASE_MODEL_PATH=str(settings.resolved_base_model_path),
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise UnavailableError(f"model server exited with {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                time.sleep(1)
            else:
                raise UnavailableError(f"model server not ready after {timeout_s:.0f} s; see {log_path}")
            yield url
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            proc.kill()  # still running after 30 s (a no-op once it has exited)


async def answer_all(engine: AnswerEngine, requests: list[AnswerRequest], concurrency: int, progress=None) -> list:
    """Every request through ``engine.answer``, ``concurrency`` at a time; results in request order."""
    import anyio

    results: list = [None] * len(requests)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            results[i] = await engine.answer(requests[i])
        if progress is not None:
            progress(1)

    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    return results


@contextlib.contextmanager
def served_engines(settings, models: dict[str, str], out: Path, *, llm_url, server_threads: int, answerability, layers):
    """An evaluation's answer core per model, with the served collaborators: the retriever, a real
    TGI-protocol model server over HTTP (the embedded one, started with the adapters under test unless
    ``llm_url`` is given), the chat template, an answer log of its own (next to ``out``), ``answerability``.
    Yields (the settings used, the retriever, {model name: AnswerEngine}); ``layers`` as ``AnswerEngine``."""
    s = settings.model_copy(update={"database_url": f"sqlite:///{(out.parent / (out.stem + '-answers.db')).resolve()}"})
    adapters = {n: p for n, p in models.items() if p != BASE}
    ctx = (
        contextlib.nullcontext(llm_url)
        if llm_url
        else model_server(s, adapters, out.parent / (out.stem + "-server.log"), threads=server_threads)
    )
    with ctx as server_url:
        retriever = Retriever(s)
        store = AnswerStore(s)
        store.migrate()
        engines = {}
        for name in models:
            ms = s.model_copy(update={"llm_url": server_url, "llm_adapter": None if name == BASE else name})
            renderer = PromptRenderer(ms.resolved_tokenizer_path)
            engines[name] = AnswerEngine(ms, retriever, LLMClient(ms), renderer, store, answerability, layers=layers)
        yield s, retriever, engines


def scored_answer(res, answers, is_impossible: bool, should_refuse: bool, category: str) -> Scored:
    """An answer of the answer core as the metrics score it (EM/F1 for an answered answerable question)."""
    em = f1 = 0.0
    if not is_impossible and not res.refused:
        em, f1 = exact_match(res.answer, answers), token_f1(res.answer, answers)
    conf = 1.0 if res.refusal_confidence is None else float(res.refusal_confidence)
    return Scored(should_refuse, res.refused, conf, em, f1, category)


def count_layers(results) -> dict[str, int]:
    """How many answers each refusal layer refused ("answered": none)."""
    layers: dict[str, int] = {}
    for res in results:
        layers[res.refusal_layer or "answered"] = layers.get(res.refusal_layer or "answered", 0) + 1
    return layers


def run_rag_eval(
    settings,
    ev: dict,
    models: dict[str, str],
    *,
    source,
    split,
    limit,
    collection,
    out: Path,
    progress: bool = True,
    verifier_path: Path | None = None,
    reader_path: Path | None = None,
) -> dict:
    import anyio
    from tqdm import tqdm

    models = parse_models(models)
    rag = ev.get("rag", {}) or {}
    src = resolve_data_source(source or ev.get("source"), settings)
    split = split or ev.get("split", "dev")
    collection = collection or rag.get("collection", "squad-eval")
    k = int(rag.get("top_k", settings.top_k))
    corpus = load_squad(split_path(src, split), split)
    others = [load_squad(split_path(src, s), s) for s in rag.get("also_ingest", ["train"]) if s != split]
    questions = sample_questions(corpus.questions, limit, int(ev.get("seed", 13)))

    verifier = load_eval_verifier(settings, ev, verifier_path, reader_path)
    t0 = time.monotonic()
    token_thresholds = rag.get("thresholds", {}) or {}
    thresholds = dict(token_thresholds)
    if verifier is not None:  # one signal for every model: the verifier's, at its validation threshold
        thresholds = {name: verifier.threshold for name in models}
    results: dict[str, dict] = {}
    # no threshold refuses in the engine (the reader or verifier scores every question, the first token's
    # confidence is reported): the thresholds are applied in the metrics, by the same rule
    served = served_engines(
        settings,
        models,
        out,
        llm_url=rag.get("llm_url"),
        server_threads=int(rag.get("server_threads", 1)),
        answerability=verifier,
        layers=MEASURE_ONLY,
    )
    with served as (s, retriever, engines):
        ingest = ensure_collection(s, collection, [corpus, *others])
        requests = [AnswerRequest(question=q.question, collection=collection, top_k=k) for q in questions]
        hits = [[h.doc_id for h in retriever.retrieve(q.question, collection, k)] for q in questions]
        for name, engine in engines.items():
            with tqdm(total=len(questions), desc=f"{name} rag", disable=not progress) as bar:
                answers = anyio.run(answer_all, engine, requests, int(rag.get("concurrency", 4)), bar.update)
            scored, scored_token = [], []
            for q, res, doc_ids in zip(questions, answers, hits, strict=True):
                gold = q.doc_id in doc_ids
                cat = ("unanswerable" if q.is_impossible else "answerable") + ("" if gold else "_retrieval_miss")
                x = scored_answer(res, q.answers, q.is_impossible, q.is_impossible or not gold, cat)
                scored.append(x)
                token_conf = res.signals.get("first_token")
                scored_token.append(replace(x, confidence=1.0 if token_conf is None else float(token_conf)))
            threshold = thresholds.get(name)
            by_retrieval = {}
            for label, keep in (("gold retrieved", True), ("gold missed", False)):
                xs = [x for x, q, ids in zip(scored, questions, hits, strict=True) if (q.doc_id in ids) == keep]
                if xs:
                    by_retrieval[label] = decision_metrics(xs, threshold)
            results[name] = {
                "model": models[name],
                "threshold": threshold,
                "model_only": summarize(scored, None, n_boot=int(ev.get("bootstrap", 1000))),
                "at_threshold": summarize(scored, threshold, n_boot=int(ev.get("bootstrap", 1000)))
                if threshold is not None
                else None,
                "by_retrieval": by_retrieval,
                # with the verifier as the signal, the first-token signal at its own threshold, side by side
                "first_token_at_threshold": summarize(scored_token, token_thresholds[name], n_boot=0)
                if verifier is not None and token_thresholds.get(name) is not None
                else None,
                "refusal_layers": count_layers(answers),
                "gold_retrieval_rate": sum(q.doc_id in ids for q, ids in zip(questions, hits, strict=True))
                / max(1, len(questions)),
            }
    run = {
        "config": run_config(
            "rag",
            src,
            split,
            len(questions),
            limit,
            verifier,
            t0,
            models,
            collection=collection,
            top_k=k,
            ingest={key: ingest.get(key) for key in ("new", "changed", "unchanged", "chunks_added", "seconds")},
            should_refuse="unanswerable, or answerable whose gold paragraph retrieval missed",
            min_retrieval_score=s.min_retrieval_score,
            grounding_enforce=s.grounding_enforce,
        ),
        "models": results,
    }
    write_report(run, out, out.with_suffix(".md"), title=f"Candor evaluation: end-to-end RAG, {split}")
    return run
