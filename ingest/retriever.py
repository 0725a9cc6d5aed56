"""Retrieval: the function the chat service, the CLI and the benchmarks call.

``Retriever(settings).retrieve(query, collection, k)`` embeds the query with the
collection's own embedding model (loaded once, lazily, on first use) and asks
Chroma for the k nearest chunks. Scores are cosine similarities (1 - Chroma's
cosine distance), higher is better. Query embedding is serialised process-wide
(``embedder.ENCODE_LOCK``, shared with ingest): the process gives torch one
thread, and a Rust tokenizer shared by threads can fail with "Already borrowed"
when called concurrently. Chroma queries run in parallel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from candor.errors import ConflictError, InvalidInputError
from candor.ingest import store
from candor.ingest.chunking import FILE_KEY, HASH_KEY, SOURCE_KEY, TITLE_KEY
from candor.ingest.embedder import get_embed_model, model_info
from candor.ingest.fingerprint import Fingerprint
from candor.settings import Settings

# Keys llama-index and Candor put on every chunk; the rest is the document's own metadata.
_INTERNAL_KEYS = {"_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id", TITLE_KEY}
MAX_K = 100
MAX_QUERY_CHARS = 10_000


@dataclass
class RetrievedChunk:
    chunk_id: str  # stable: same document content + settings -> same id
    doc_id: str  # jsonl id/doc_id, or the file path relative to the ingest root
    text: str
    score: float  # cosine similarity, higher is better
    source: str  # file path, or file#doc_id for jsonl, api#doc_id for posted documents
    title: str | None
    metadata: dict = field(default_factory=dict)


class Retriever:
    """Thread-safe; one per process is enough (the embedding model is loaded once)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._model: Any = None
        self._model_id: str | None = None

    def _embed(self, query: str) -> list[float]:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model_id = model_info(self.settings).model_id
                    self._model = get_embed_model(self.settings)
        return self._model.get_query_embedding(query)  # encode calls take turns (embedder.ENCODE_LOCK)

    def warm_up(self) -> None:
        """Load the model now (the API calls this at start-up instead of on the first question)."""
        self._embed("warm up")

    def retrieve(self, query: str, collection: str, k: int) -> list[RetrievedChunk]:
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("the query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInputError(f"the query is longer than {MAX_QUERY_CHARS} characters")
        if not 1 <= int(k) <= MAX_K:
            raise InvalidInputError(f"k must be between 1 and {MAX_K}, got {k}")
        col = store.get_collection(self.settings, collection)  # NotFoundError / UnavailableError
        embedding = self._embed(query)
        self._check_model(collection, col.metadata)
        with store.chroma_errors(self.settings):
            res = col.query(
                query_embeddings=[embedding],
                n_results=int(k),
                include=["documents", "metadatas", "distances"],
            )
        ids = res["ids"][0] if res["ids"] else []
        docs = res["documents"][0] if res["documents"] else []
        metas = res["metadatas"][0] if res["metadatas"] else []
        dists = res["distances"][0] if res["distances"] else []
        return [
            _to_chunk(cid, text, meta or {}, dist)
            for cid, text, meta, dist in zip(ids, docs, metas, dists, strict=True)
        ]

    def _check_model(self, collection: str, metadata: dict | None) -> None:
        stored = Fingerprint.from_metadata(metadata)
        if stored is None:
            raise ConflictError(f"Chroma collection {collection!r} was not made by Candor (no fingerprint)")
        if stored.embed_model != self._model_id:
            raise ConflictError(
                f"collection {collection!r} was embedded with {stored.embed_model}, but this process "
                f"embeds queries with {self._model_id}: re-ingest it with --reindex or fix CANDOR_EMBED_MODEL_PATH"
            )


def _to_chunk(chunk_id: str, text: str | None, meta: dict, distance: float) -> RetrievedChunk:
    user = {k: v for k, v in meta.items() if k not in _INTERNAL_KEYS and k not in {SOURCE_KEY, HASH_KEY, FILE_KEY}}
    return RetrievedChunk(
        chunk_id=chunk_id,
        doc_id=str(meta.get("doc_id", "")),
        text=text or "",
        score=float(1.0 - distance),
        source=str(meta.get(SOURCE_KEY, "")),
        title=meta.get(TITLE_KEY) or None,
        metadata=user,
    )
