"""Ingest (layer 2, stores and clients): document loaders, the ingestion pipeline, the Chroma store and
the retriever.

Modules: ``loaders`` (files -> documents), ``documents`` (the document model),
``chunking`` (llama-index splitter, embedder, vector store), ``embedder`` (the
local model), ``fingerprint``, ``manifest`` and ``writer`` (crash-safe
incremental writes), ``pipeline`` (ingest_paths / ingest_documents /
delete_documents), ``collections`` (list / describe / verify / delete),
``store`` (the Chroma client) and ``retriever`` (Retriever, RetrievedChunk).
Nothing heavy is imported at module level.
"""
