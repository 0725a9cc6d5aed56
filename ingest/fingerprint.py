"""A collection's fingerprint: what its vectors were made with.

Vectors from a different model, or chunks cut differently, must never be mixed
into one collection: queries would compare incomparable things and incremental
ingest would keep stale chunks. The fingerprint is stored in the chunk
collection's metadata when it is created and checked on every ingest (and the
embedding model on every retrieval).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from candor.ingest.embedder import effective_chunking, model_info
from candor.settings import Settings

FORMAT = 1  # bump when the chunk layout (ids, metadata, embedded text) changes
SPLITTER = "llama-index SentenceSplitter; embed-model tokens; title in embedded text"
META_PREFIX = "candor_fp_"


@dataclass(frozen=True)
class Fingerprint:
    embed_model: str
    embed_dim: int
    chunk_size: int
    chunk_overlap: int
    splitter: str = SPLITTER
    format: int = FORMAT

    @property
    def key(self) -> str:
        """Short stable hash; part of every chunk id, so other settings give other ids."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {META_PREFIX + k: v for k, v in asdict(self).items()}
        meta[META_PREFIX + "key"] = self.key
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, Any] | None) -> Fingerprint | None:
        meta = meta or {}
        try:
            return cls(
                embed_model=str(meta[META_PREFIX + "embed_model"]),
                embed_dim=int(meta[META_PREFIX + "embed_dim"]),
                chunk_size=int(meta[META_PREFIX + "chunk_size"]),
                chunk_overlap=int(meta[META_PREFIX + "chunk_overlap"]),
                splitter=str(meta[META_PREFIX + "splitter"]),
                format=int(meta[META_PREFIX + "format"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def differences(self, other: Fingerprint) -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: {mine[k]} -> {theirs[k]}" for k in mine if mine[k] != theirs[k]]


def current_fingerprint(settings: Settings) -> Fingerprint:
    info = model_info(settings)
    size, overlap = effective_chunking(settings)
    return Fingerprint(embed_model=info.model_id, embed_dim=info.dimension, chunk_size=size, chunk_overlap=overlap)
