"""Ingest: document loaders, the ingestion pipeline, the Chroma store and the retriever."""
