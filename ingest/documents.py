"""The document model of ingest: what a loader produces and what the manifest tracks.

A ``SourceDocument`` is one unit of change tracking: a file, or one line of a
JSONL file, or one document posted over HTTP. Its ``content_hash`` covers only
what ends up in the index (id, title, text, user metadata), never file
timestamps, so touching a file does not re-embed it.

Pure Python: no heavy imports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from candor.errors import InvalidInputError

# Metadata keys Candor or llama-index write on every chunk; user metadata may not use them.
RESERVED_METADATA_KEYS = frozenset(
    {"title", "doc_id", "document_id", "ref_doc_id", "_node_content", "_node_type", "id", "text"}
)
RESERVED_PREFIX = "candor_"
MAX_TITLE_CHARS = 160  # the title goes into every chunk's embedded text; keep it short
MAX_DOC_ID_CHARS = 1024


@dataclass(frozen=True)
class SourceDocument:
    """One document as loaded, before splitting."""

    doc_id: str
    text: str
    source: str  # a file path, file#doc_id for JSONL, api#doc_id for posted documents
    title: str | None = None
    metadata: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    file: str | None = None  # the file it came from (relative to its ingest root); None: posted over HTTP

    @property
    def content_hash(self) -> str:
        """Hash of everything that shapes the stored chunks (not mtime, not the source path)."""
        payload = json.dumps(
            [self.doc_id, self.title, self.text, sorted(self.metadata.items())],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def flatten_metadata(raw: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """Chroma stores only scalars: keep str/int/float/bool, JSON-encode the rest, drop None.

    Raises ValueError naming a reserved key, so the caller can report the line.
    """
    flat: dict[str, str | int | float | bool] = {}
    for key, value in raw.items():
        key = str(key)
        if key in RESERVED_METADATA_KEYS or key.startswith(RESERVED_PREFIX):
            raise ValueError(f"metadata key {key!r} is reserved")
        if value is None:
            continue
        if isinstance(value, str | int | float | bool):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return flat


def clean_title(title: Any) -> str | None:
    if title is None:
        return None
    if not isinstance(title, str):
        raise ValueError(f"'title' must be a string, got {type(title).__name__}")
    title = " ".join(title.split())
    return title[:MAX_TITLE_CHARS] or None


def clean_doc_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"the document id must be a string or an integer, got {type(value).__name__}")
    doc_id = str(value).strip()
    if not doc_id:
        raise ValueError("the document id is empty")
    if len(doc_id) > MAX_DOC_ID_CHARS:
        raise ValueError(f"the document id is longer than {MAX_DOC_ID_CHARS} characters")
    return doc_id


def document_from_record(record: Any, *, source_prefix: str, file: str | None) -> SourceDocument:
    """Build a document from a JSON object: ``id``/``doc_id``, ``text``, optional ``title``/``metadata``.

    Other keys become metadata (the JSONL format); an explicit ``metadata``
    object is merged in. Raises ValueError with a reason a person can act on.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "id" in record and "doc_id" in record and str(record["id"]) != str(record["doc_id"]):
        raise ValueError("both 'id' and 'doc_id' are given and they differ")
    if "id" not in record and "doc_id" not in record:
        raise ValueError("missing 'id' (or 'doc_id')")
    doc_id = clean_doc_id(record.get("id", record.get("doc_id")))
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError("missing 'text'" if text is None else "'text' must be a string")
    if not text.strip():
        raise ValueError("'text' is empty")
    title = clean_title(record.get("title"))
    extra = {k: v for k, v in record.items() if k not in {"id", "doc_id", "text", "title", "metadata"}}
    nested = record.get("metadata")
    if nested is not None:
        if not isinstance(nested, dict):
            raise ValueError("'metadata' must be an object")
        extra.update(nested)
    return SourceDocument(
        doc_id=doc_id,
        text=text,
        title=title,
        metadata=flatten_metadata(extra),
        source=f"{source_prefix}#{doc_id}",
        file=file,
    )


def documents_from_records(records: list[Any]) -> list[SourceDocument]:
    """Validate documents posted over HTTP; all or nothing, every problem listed."""
    if not isinstance(records, list) or not records:
        raise InvalidInputError("expected a non-empty list of documents")
    docs: list[SourceDocument] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, record in enumerate(records):
        try:
            doc = document_from_record(record, source_prefix="api", file=None)
        except ValueError as exc:
            problems.append(f"document {i}: {exc}")
            continue
        if doc.doc_id in seen:
            problems.append(f"document {i}: duplicate id {doc.doc_id!r}")
            continue
        seen.add(doc.doc_id)
        docs.append(doc)
    if problems:
        raise InvalidInputError("invalid documents:\n  " + "\n  ".join(problems))
    return docs
