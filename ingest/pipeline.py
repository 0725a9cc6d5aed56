"""Incremental ingest: load, compare with the manifest, embed only what changed, prune, report.

``ingest_paths`` is what ``candor ingest`` runs; ``ingest_documents`` and
``delete_documents`` are what the API calls for documents posted over HTTP.
All three go through ``CollectionWriter``, which owns the crash-safe order of
writes; this module decides *what* to write.

A document is unchanged when its content hash (id, title, text, metadata)
matches the manifest: file timestamps never count. ``prune`` deletes documents
that came from files and are not among this run's inputs, except those of files
that failed to load this time (a file that turns unreadable must not lose its
stored version). Documents posted over HTTP are never pruned.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError, NotFoundError
from candor.ingest.documents import SourceDocument, documents_from_records
from candor.ingest.loaders import LoadFailure, load_paths
from candor.ingest.manifest import Job, ManifestEntry
from candor.ingest.store import chroma_errors, validate_collection_name
from candor.ingest.writer import CollectionWriter
from candor.settings import Settings

MAX_BATCH_CHARS = 2_000_000  # keep a batch's text (and its embedding time) bounded


@dataclass
class IngestReport:
    """What an ingest did. ``ok`` is False when any file or line failed."""

    collection: str
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    chunks_added: int = 0
    chunks_deleted: int = 0
    files: int = 0
    skipped_files: list[str] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)
    recovered: int = 0  # documents reconciled after a killed earlier job
    reindexed: bool = False
    prune_protected: int = 0  # documents kept despite --prune because their file failed to load
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [{"where": f.where, "reason": f.reason} for f in self.failures]
        data["ok"] = self.ok
        data["seconds"] = round(self.seconds, 3)
        return data

    def summary(self) -> str:
        lines = [
            f"collection {self.collection!r}: documents {self.new} new, {self.changed} changed, "
            f"{self.unchanged} unchanged, {self.deleted} deleted, {self.failed} failed; "
            f"chunks {self.chunks_added} added, {self.chunks_deleted} deleted; {self.seconds:.1f} s"
        ]
        if self.reindexed:
            lines.append("re-indexed: the collection was rebuilt with the current settings")
        if self.recovered:
            lines.append(f"recovered {self.recovered} document(s) left half-written by an interrupted ingest")
        if self.prune_protected:
            lines.append(f"kept {self.prune_protected} document(s) from files that failed to load (not pruned)")
        if self.skipped_files:
            lines.append(f"skipped {len(self.skipped_files)} file(s) of unsupported types")
        for f in self.failures:
            lines.append(f"  failed: {f.where}: {f.reason}")
        return "\n".join(lines)


def ingest_paths(
    settings: Settings,
    paths: Sequence[str | Path],
    collection: str,
    prune: bool = False,
    reindex: bool = False,
    progress: bool = False,
    follow_links: bool = False,
) -> IngestReport:
    """Ingest files and directories into ``collection``; failures are reported, not raised.

    A symbolic link in a folder that points out of it is a failure, not read, unless ``follow_links``.
    """
    started = time.monotonic()
    validate_collection_name(collection)
    loaded = load_paths(paths, follow_links=follow_links)  # raises for missing paths before anything is written
    report = IngestReport(
        collection=collection,
        files=loaded.files,
        skipped_files=loaded.skipped,
        failures=loaded.failures,
        failed=len(loaded.failures),
        reindexed=reindex,
    )
    with chroma_errors(settings):
        writer = CollectionWriter.open(settings, collection, reindex=reindex)
        _sync(writer, loaded.documents, report, prune=prune, protected_files=loaded.failed_files, progress=progress)
    report.seconds = time.monotonic() - started
    return report


def ingest_documents(settings: Settings, collection: str, docs: Sequence[dict[str, Any]]) -> IngestReport:
    """Add or replace documents posted over HTTP (``{id, text, title?, metadata?}``); all are validated first."""
    started = time.monotonic()
    validate_collection_name(collection)
    documents = documents_from_records(list(docs))
    report = IngestReport(collection=collection)
    with chroma_errors(settings):
        writer = CollectionWriter.open(settings, collection)
        _sync(writer, documents, report, prune=False, protected_files=set(), progress=False)
    report.seconds = time.monotonic() - started
    return report


def delete_documents(settings: Settings, collection: str, doc_ids: Sequence[str]) -> list[str]:
    """Delete documents by id; NotFoundError (nothing deleted) if any id is not in the collection."""
    ids = list(dict.fromkeys(doc_ids))
    if not ids:
        raise InvalidInputError("no document ids given")
    with chroma_errors(settings):
        writer = CollectionWriter.open(settings, collection, create=False)
        known = writer.manifest.get(ids)
        missing = [d for d in ids if d not in known]
        if missing:
            raise NotFoundError(f"no document {', '.join(map(repr, missing))} in collection {collection!r}")
        with Job() as job:
            writer.recover()
            writer.delete(ids, job)
    return ids


def _sync(
    writer: CollectionWriter,
    documents: list[SourceDocument],
    report: IngestReport,
    *,
    prune: bool,
    protected_files: set[str],
    progress: bool,
) -> None:
    with Job() as job:
        report.recovered = writer.recover()
        committed = writer.manifest.entries()
        todo: list[SourceDocument] = []
        for doc in documents:
            entry = committed.get(doc.doc_id)
            if entry is None:
                report.new += 1
                todo.append(doc)
            elif entry.doc_hash != doc.content_hash:
                report.changed += 1
                report.chunks_deleted += entry.n_chunks
                todo.append(doc)
            else:
                report.unchanged += 1
        stale: list[ManifestEntry] = []
        if prune:
            present = {d.doc_id for d in documents}
            for entry in committed.values():
                if entry.file is None or entry.doc_id in present:
                    continue
                if entry.file in protected_files:
                    report.prune_protected += 1
                else:
                    stale.append(entry)
        _write_all(writer, todo, job, report, progress, writer.settings.ingest_batch_docs)
        if stale:
            writer.delete([e.doc_id for e in stale], job)
            report.deleted = len(stale)
            report.chunks_deleted += sum(e.n_chunks for e in stale)


def _write_all(
    writer: CollectionWriter,
    todo: list[SourceDocument],
    job: Job,
    report: IngestReport,
    progress: bool,
    batch_docs: int,
) -> None:
    if not todo:
        return
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="doc", desc=f"ingest {writer.name}", file=sys.stderr, leave=False)
    try:
        for batch_no, batch in enumerate(_batches(todo, batch_docs), start=1):
            counts = writer.write(batch, job, batch_no)
            report.chunks_added += sum(counts.values())
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(chunks=report.chunks_added)
    finally:
        if bar is not None:
            bar.close()


def _batches(docs: list[SourceDocument], max_docs: int) -> Iterator[list[SourceDocument]]:
    batch: list[SourceDocument] = []
    chars = 0
    for doc in docs:
        if batch and (len(batch) >= max_docs or chars + len(doc.text) > MAX_BATCH_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append(doc)
        chars += len(doc.text)
    if batch:
        yield batch
