"""Collection administration: list, describe, verify and delete collections (and documents).

``verify_collection`` is the exact check behind the crash-safety promise: the
chunk ids in Chroma must equal the ids the manifest implies (each committed
document's hash and chunk count), with no pending notes left.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from candor.errors import NotFoundError
from candor.ingest import store
from candor.ingest.fingerprint import Fingerprint
from candor.ingest.manifest import Manifest
from candor.ingest.pipeline import delete_documents  # noqa: F401  (part of this module's API)
from candor.settings import Settings


@dataclass
class CollectionInfo:
    name: str
    documents: int
    chunks: int
    pending: int
    fingerprint: dict[str, Any] | None
    created_at: float | None = None
    manifest_missing: bool = False
    sources: list[str] = field(default_factory=list)  # a sample of document sources

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    name: str
    expected_chunks: int
    actual_chunks: int
    missing: list[str]  # chunk ids the manifest implies but Chroma lacks
    orphans: list[str]  # chunk ids in Chroma the manifest does not account for
    pending: int

    @property
    def ok(self) -> bool:
        return not self.missing and not self.orphans and self.pending == 0


def list_collections(settings: Settings) -> list[str]:
    """Names of Candor collections (what the API lists and `candor collections list` shows)."""
    return store.list_collection_names(settings)


def describe_collection(settings: Settings, name: str, sample: int = 5) -> CollectionInfo:
    chunks = store.get_collection(settings, name)
    manifest_col = store.get_manifest_collection(settings, name)
    fingerprint = Fingerprint.from_metadata(chunks.metadata)
    with store.chroma_errors(settings):
        n_chunks = chunks.count()
        docs = pending = 0
        sources: list[str] = []
        if manifest_col is not None:
            manifest = Manifest(manifest_col)
            docs = manifest.count()
            pending = len(manifest.pending())
            if sample > 0:
                page = manifest_col.get(where={"kind": "doc"}, include=["metadatas"], limit=sample)
                sources = [str(m.get("source", "")) for m in page["metadatas"] or []]
    created = (chunks.metadata or {}).get("candor_created_at")
    return CollectionInfo(
        name=name,
        documents=docs,
        chunks=n_chunks,
        pending=pending,
        fingerprint=asdict(fingerprint) if fingerprint else None,
        created_at=float(created) if created is not None else None,
        manifest_missing=manifest_col is None,
        sources=sources,
    )


def delete_collection(settings: Settings, name: str) -> None:
    store.validate_collection_name(name)
    if not store.drop_collections(settings, name):
        raise NotFoundError(f"no collection named {name!r}")


def verify_collection(settings: Settings, name: str) -> VerifyReport:
    """Compare every chunk id in Chroma with the ids the manifest implies."""
    chunks = store.get_collection(settings, name)
    manifest_col = store.get_manifest_collection(settings, name)
    fingerprint = Fingerprint.from_metadata(chunks.metadata)
    with store.chroma_errors(settings):
        actual = {cid for cid, _ in store.iter_ids(chunks, metadata=False)}
        expected: set[str] = set()
        pending = 0
        if manifest_col is not None and fingerprint is not None:
            manifest = Manifest(manifest_col)
            for entry in manifest.entries().values():
                expected.update(entry.chunk_ids(fingerprint.key))
            pending = len(manifest.pending())
    return VerifyReport(
        name=name,
        expected_chunks=len(expected),
        actual_chunks=len(actual),
        missing=sorted(expected - actual),
        orphans=sorted(actual - expected),
        pending=pending,
    )
