"""Crash-safe writes to one collection: the order of operations that keeps chunks equal to the manifest.

Writing a batch of (new or changed) documents:
  1. note them as pending in the manifest (owner: host, pid, job);
  2. split, embed and add their chunks (stable ids: a repeat adds nothing new);
  3. commit their manifest records (hash, chunk count);
  4. delete every other chunk of those documents (their old versions);
  5. drop the pending notes.
Deleting documents: note pending, remove the records, delete the chunks, drop the notes.

A SIGKILL anywhere leaves at worst pending notes and chunks the manifest does
not describe. ``recover`` (run at the start of every ingest) deletes, for each
stale pending document, all chunks except those of its committed version, so
the collection again equals its manifest: no duplicates, no orphans.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from candor.errors import ConflictError, NotFoundError
from candor.ingest import store
from candor.ingest.chunking import HASH_KEY, to_llama_document
from candor.ingest.documents import SourceDocument
from candor.ingest.fingerprint import Fingerprint, current_fingerprint
from candor.ingest.manifest import Job, Manifest, ManifestEntry, _parts
from candor.settings import Settings

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from llama_index.core.ingestion import IngestionPipeline

DOC_ID_KEY = "doc_id"  # written on every chunk by llama-index's ChromaVectorStore
FILTER_BATCH = 500


class CollectionWriter:
    def __init__(
        self,
        settings: Settings,
        name: str,
        chunks: Collection,
        manifest: Manifest,
        fingerprint: Fingerprint,
    ):
        self.settings = settings
        self.name = name
        self.chunks = chunks
        self.manifest = manifest
        self.fingerprint = fingerprint
        self._pipeline: IngestionPipeline | None = None

    # --- opening ---------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, name: str, *, create: bool = True, reindex: bool = False) -> CollectionWriter:
        """Open (or create) a collection for writing, refusing one built with other settings.

        ``reindex`` drops the collection first, so it is rebuilt from what is
        ingested now with the current settings.
        """
        store.validate_collection_name(name)
        fingerprint = current_fingerprint(settings)
        with store.chroma_errors(settings):
            try:
                chunks: Collection | None = store.get_collection(settings, name)
            except NotFoundError:
                chunks = None
            if chunks is not None:
                stored = Fingerprint.from_metadata(chunks.metadata)
                if stored is None:
                    raise ConflictError(
                        f"Chroma collection {name!r} was not made by Candor (it has no fingerprint); "
                        "choose another --collection name"
                    )
                manifest_col = store.get_manifest_collection(settings, name)
                if reindex or manifest_col is None:
                    # reindex asked, or the remains of an interrupted delete: finish dropping it
                    store.drop_collections(settings, name)
                    chunks = None
                elif stored != fingerprint:
                    raise ConflictError(
                        f"collection {name!r} was built with other settings ("
                        + "; ".join(stored.differences(fingerprint))
                        + "). Ingesting now would mix incompatible vectors: re-run with --reindex to "
                        "rebuild it from the given inputs, or use another --collection."
                    )
                else:
                    return cls(settings, name, chunks, Manifest(manifest_col), fingerprint)
            if not create:
                raise NotFoundError(f"no collection named {name!r}")
            metadata = fingerprint.to_metadata() | {"candor_created_at": time.time()}
            chunks, manifest_col = store.create_collections(settings, name, metadata)
            stored = Fingerprint.from_metadata(chunks.metadata)
            if stored != fingerprint:  # someone created it at the same moment with other settings
                raise ConflictError(f"collection {name!r} was just created by another job with other settings")
            return cls(settings, name, chunks, Manifest(manifest_col), fingerprint)

    @property
    def pipeline(self) -> IngestionPipeline:
        if self._pipeline is None:
            from candor.ingest.chunking import build_ingestion_pipeline

            self._pipeline = build_ingestion_pipeline(self.settings, self.chunks, self.fingerprint)
        return self._pipeline

    # --- the protocol -----------------------------------------------------------
    def recover(self) -> int:
        """Clean up after killed jobs; returns how many documents had to be reconciled."""
        with store.chroma_errors(self.settings):
            stale = [p for p in self.manifest.pending() if p.is_stale(self.settings.ingest_pending_lease_s)]
            if not stale:
                return 0
            doc_ids = sorted({p.doc_id for p in stale})
            committed = self.manifest.get(doc_ids)
            self._delete_chunks_except({d: committed[d].doc_hash if d in committed else None for d in doc_ids})
            self.manifest.clear_pending(doc_ids)
            return len(doc_ids)

    def write(self, docs: Sequence[SourceDocument], job: Job, batch_no: int = 0) -> dict[str, int]:
        """Embed and store a batch of documents; returns the chunk count of each."""
        ids = [d.doc_id for d in docs]
        with store.chroma_errors(self.settings):
            self.manifest.mark_pending(ids, job)
            nodes = self.pipeline.run(documents=[to_llama_document(d) for d in docs])
            counts = Counter(n.ref_doc_id for n in nodes)
            _pause_for_tests(batch_no, len(nodes))
            now = time.time()
            self.manifest.commit(
                [
                    ManifestEntry(
                        doc_id=d.doc_id,
                        doc_hash=d.content_hash,
                        n_chunks=counts[d.doc_id],
                        source=d.source,
                        title=d.title,
                        file=d.file,
                        updated_at=now,
                    )
                    for d in docs
                ]
            )
            self._delete_chunks_except({d.doc_id: d.content_hash for d in docs})
            self.manifest.clear_pending(ids)
        return {d.doc_id: counts[d.doc_id] for d in docs}

    def delete(self, doc_ids: Sequence[str], job: Job) -> None:
        with store.chroma_errors(self.settings):
            self.manifest.mark_pending(doc_ids, job)
            self.manifest.remove(doc_ids)
            self._delete_chunks_except(dict.fromkeys(doc_ids))
            self.manifest.clear_pending(doc_ids)

    def _delete_chunks_except(self, keep: dict[str, str | None]) -> None:
        """Delete the chunks of these documents, except those of the given version (hash) of each."""
        drop_all = [d for d, h in keep.items() if h is None]
        for part in _parts(drop_all, FILTER_BATCH):
            self.chunks.delete(where={DOC_ID_KEY: {"$in": part}})
        versioned = [(d, h) for d, h in keep.items() if h is not None]
        for part in _parts(versioned, FILTER_BATCH):
            # content hashes include the document id, so one $nin over the batch is exact
            self.chunks.delete(
                where={
                    "$and": [
                        {DOC_ID_KEY: {"$in": [d for d, _ in part]}},
                        {HASH_KEY: {"$nin": [h for _, h in part]}},
                    ]
                }
            )


def _pause_for_tests(batch_no: int, chunks_written: int) -> None:
    """Test hook, never set in production: ``CANDOR_TEST_PAUSE_BEFORE_COMMIT=N:PATH``.

    After batch N's chunks reached Chroma and before the manifest records them,
    write PATH (pid and counts) and wait to be killed. The crash-safety test
    SIGKILLs the process here, so it knows exactly where the kill landed.
    """
    spec = os.environ.get("CANDOR_TEST_PAUSE_BEFORE_COMMIT")
    if not spec:
        return
    n, _, path = spec.partition(":")
    if int(n) != batch_no:
        return
    info = {"pid": os.getpid(), "batch": batch_no, "chunks_written": chunks_written}
    Path(path).write_text(json.dumps(info), encoding="utf-8")
    while True:
        time.sleep(0.5)
