"""The per-collection manifest, kept in Chroma beside the chunks (``NAME.manifest``).

One record per document (``doc:<id>``): its content hash, chunk count, source,
title and the file it came from. Because it lives in Chroma, every API replica
and ingest job sees the same truth, and the chunk ids of a document are
derivable from it (see ``chunk_ids``), so "collection equals manifest" can be
checked exactly.

Besides committed documents it holds *pending* records (``pending:<id>``): a
write-ahead note, put down before a document's chunks are written or deleted
and removed after the manifest records the outcome. A pending record left
behind by a killed job tells the next job which documents may have unrecorded
chunks; it deletes those chunks (everything of that document except the
committed version) and drops the note. Pending records carry their owner (host,
pid, job) so a live job's work is never "recovered" from under it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from candor.ingest.store import iter_ids

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

DOC_PREFIX = "doc:"
PENDING_PREFIX = "pending:"
_PLACEHOLDER = [1.0]  # manifest records are looked up by id, never by vector
WRITE_BATCH = 1000

_active_jobs: set[str] = set()  # jobs running in this process; their pending records are live


def chunk_id(fingerprint_key: str, doc_hash: str, index: int) -> str:
    """Stable chunk id: same document content and same settings give the same id."""
    base = hashlib.sha256(f"{fingerprint_key}\0{doc_hash}".encode()).hexdigest()[:32]
    return f"{base}-{index}"


@dataclass(frozen=True)
class ManifestEntry:
    doc_id: str
    doc_hash: str
    n_chunks: int
    source: str
    title: str | None = None
    file: str | None = None  # set for documents that came from files: only those are pruned
    updated_at: float = 0.0

    def chunk_ids(self, fingerprint_key: str) -> list[str]:
        return [chunk_id(fingerprint_key, self.doc_hash, i) for i in range(self.n_chunks)]

    def to_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "kind": "doc",
            "doc_id": self.doc_id,
            "doc_hash": self.doc_hash,
            "n_chunks": self.n_chunks,
            "source": self.source,
            "updated_at": self.updated_at or time.time(),
        }
        if self.title:
            meta["title"] = self.title
        if self.file:
            meta["file"] = self.file
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ManifestEntry:
        return cls(
            doc_id=str(meta["doc_id"]),
            doc_hash=str(meta["doc_hash"]),
            n_chunks=int(meta["n_chunks"]),
            source=str(meta.get("source", "")),
            title=meta.get("title") or None,
            file=meta.get("file") or None,
            updated_at=float(meta.get("updated_at") or 0.0),
        )


@dataclass(frozen=True)
class Job:
    """Who is writing: pending records name their job so live work is told apart from a crash."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    job: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __enter__(self) -> Job:
        _active_jobs.add(self.job)
        return self

    def __exit__(self, *exc: object) -> None:
        _active_jobs.discard(self.job)


@dataclass(frozen=True)
class PendingEntry:
    doc_id: str
    host: str
    pid: int
    job: str
    started_at: float

    def is_stale(self, lease_s: float, now: float | None = None) -> bool:
        """Is the job that wrote this note gone? Only then may its chunks be cleaned up."""
        if self.job in _active_jobs:
            return False
        age = (now or time.time()) - self.started_at
        if self.host == socket.gethostname():
            if self.pid == os.getpid():
                return True  # our process, but that job is over: it failed before cleaning up
            return not _pid_alive(self.pid) or age > lease_s
        return age > lease_s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Manifest:
    """Reads and writes the manifest collection; every call is one Chroma request per batch."""

    def __init__(self, collection: Collection):
        self.collection = collection

    def entries(self) -> dict[str, ManifestEntry]:
        return {
            e.doc_id: e for e in (ManifestEntry.from_metadata(m) for _, m in iter_ids(self.collection, {"kind": "doc"}))
        }

    def get(self, doc_ids: Sequence[str]) -> dict[str, ManifestEntry]:
        found: dict[str, ManifestEntry] = {}
        for part in _parts(list(doc_ids), WRITE_BATCH):
            page = self.collection.get(ids=[DOC_PREFIX + d for d in part], include=["metadatas"])
            for meta in page["metadatas"] or []:
                entry = ManifestEntry.from_metadata(meta)
                found[entry.doc_id] = entry
        return found

    def count(self) -> int:
        return len(self.collection.get(where={"kind": "doc"}, include=[])["ids"])

    def pending(self) -> list[PendingEntry]:
        return [
            PendingEntry(
                doc_id=str(m["doc_id"]),
                host=str(m.get("host", "")),
                pid=int(m.get("pid", 0)),
                job=str(m.get("job", "")),
                started_at=float(m.get("started_at", 0.0)),
            )
            for _, m in iter_ids(self.collection, {"kind": "pending"})
        ]

    def mark_pending(self, doc_ids: Iterable[str], job: Job) -> None:
        now = time.time()
        for part in _parts(list(doc_ids), WRITE_BATCH):
            self.collection.upsert(
                ids=[PENDING_PREFIX + d for d in part],
                embeddings=[_PLACEHOLDER] * len(part),
                metadatas=[
                    {
                        "kind": "pending",
                        "doc_id": d,
                        "host": job.host,
                        "pid": job.pid,
                        "job": job.job,
                        "started_at": now,
                    }
                    for d in part
                ],
            )

    def clear_pending(self, doc_ids: Iterable[str]) -> None:
        for part in _parts(list(doc_ids), WRITE_BATCH):
            self.collection.delete(ids=[PENDING_PREFIX + d for d in part])

    def commit(self, entries: Sequence[ManifestEntry]) -> None:
        for part in _parts(list(entries), WRITE_BATCH):
            self.collection.upsert(
                ids=[DOC_PREFIX + e.doc_id for e in part],
                embeddings=[_PLACEHOLDER] * len(part),
                metadatas=[e.to_metadata() for e in part],
            )

    def remove(self, doc_ids: Iterable[str]) -> None:
        for part in _parts(list(doc_ids), WRITE_BATCH):
            self.collection.delete(ids=[DOC_PREFIX + d for d in part])


def _parts(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
