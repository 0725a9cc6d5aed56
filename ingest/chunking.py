"""The llama-index side of ingest: documents -> SentenceSplitter -> embeddings -> ChromaVectorStore.

Chunk ids come from the document's content hash, the fingerprint and the chunk
index (``manifest.chunk_id``), never from random UUIDs, so the same content
under the same settings always lands on the same ids and a repeated write is a
no-op. Only the title goes into the embedded text beside the chunk; ids,
hashes, sources and user metadata stay out of it (and out of the splitter's
token budget).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from candor.ingest.documents import SourceDocument
from candor.ingest.embedder import get_embed_model, prepare_environment, token_counter
from candor.ingest.fingerprint import Fingerprint
from candor.ingest.manifest import chunk_id
from candor.settings import Settings

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.schema import Document

# Chunk metadata keys Candor writes (besides llama-index's own doc_id/document_id/ref_doc_id).
SOURCE_KEY = "candor_source"
HASH_KEY = "candor_doc_hash"
FILE_KEY = "candor_file"
TITLE_KEY = "title"


def to_llama_document(doc: SourceDocument) -> Document:
    from llama_index.core.schema import Document

    metadata: dict = dict(doc.metadata)
    metadata[SOURCE_KEY] = doc.source
    metadata[HASH_KEY] = doc.content_hash
    if doc.file:
        metadata[FILE_KEY] = doc.file
    if doc.title:
        metadata[TITLE_KEY] = doc.title
    hidden = [k for k in metadata if k != TITLE_KEY]
    return Document(
        id_=doc.doc_id,
        text=doc.text,
        metadata=metadata,
        excluded_embed_metadata_keys=hidden,
        excluded_llm_metadata_keys=hidden,
    )


def build_splitter(settings: Settings, fingerprint: Fingerprint) -> SentenceSplitter:
    prepare_environment(settings)
    from llama_index.core.node_parser import SentenceSplitter

    key = fingerprint.key

    def stable_id(index: int, document: Document) -> str:
        return chunk_id(key, document.metadata[HASH_KEY], index)

    return SentenceSplitter(
        chunk_size=fingerprint.chunk_size,
        chunk_overlap=fingerprint.chunk_overlap,
        tokenizer=token_counter(settings),
        id_func=stable_id,
    )


def build_ingestion_pipeline(settings: Settings, collection: Collection, fingerprint: Fingerprint) -> IngestionPipeline:
    """Split, embed (the local model) and add to Chroma with the embeddings: Chroma never embeds."""
    embed_model = get_embed_model(settings)
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.vector_stores.chroma import ChromaVectorStore

    return IngestionPipeline(
        transformations=[build_splitter(settings, fingerprint), embed_model],
        vector_store=ChromaVectorStore(chroma_collection=collection),
        disable_cache=True,  # nothing is re-run within a process; the manifest does the skipping
    )
