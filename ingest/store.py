"""The Chroma side of ingest: the client factory, collection names and error translation.

Embedded ``PersistentClient`` under ``settings.resolved_chroma_path`` by default;
``CANDOR_CHROMA_URL`` switches to ``HttpClient`` against a Chroma server. Every
collection Candor creates is made with ``embedding_function=None`` and cosine
space, and every write passes its own embeddings: Chroma's default embedding
function would try to download an ONNX model.

Each Candor collection NAME is two Chroma collections: ``NAME`` (the chunks,
with the fingerprint in its metadata) and ``NAME.manifest`` (one record per
document: the manifest, see manifest.py). User names cannot contain a dot, so
the two can never collide.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from candor.errors import InvalidInputError, NotFoundError, UnavailableError
from candor.settings import Settings

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

NAME_RULE = "3-63 characters: letters, digits, '-' or '_', starting and ending with a letter or digit"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,61}[A-Za-z0-9]$")
MANIFEST_SUFFIX = ".manifest"
PAGE = 5000  # ids per get() page when scanning a collection

_clients: dict[str, ClientAPI] = {}
_clients_lock = threading.Lock()


def validate_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInputError(f"invalid collection name {name!r}: use {NAME_RULE}")
    return name


def manifest_name(name: str) -> str:
    return name + MANIFEST_SUFFIX


def describe_location(settings: Settings) -> str:
    return settings.chroma_url or str(settings.resolved_chroma_path)


def _chroma_settings() -> Any:
    import chromadb

    # Telemetry off: no network calls from a service that runs offline.
    return chromadb.Settings(anonymized_telemetry=False, allow_reset=False)


def get_client(settings: Settings) -> ClientAPI:
    """The Chroma client for these settings, created once per location and reused (thread-safe)."""
    key = settings.chroma_url or str(settings.resolved_chroma_path.resolve())
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        with chroma_errors(settings):
            import chromadb

            if settings.chroma_url:
                url = urlparse(settings.chroma_url)
                if url.scheme not in {"http", "https"} or not url.hostname:
                    raise InvalidInputError(
                        f"CANDOR_CHROMA_URL must look like http://host:port, got {settings.chroma_url!r}"
                    )
                client = chromadb.HttpClient(
                    host=url.hostname,
                    port=url.port or (443 if url.scheme == "https" else 8000),
                    ssl=url.scheme == "https",
                    settings=_chroma_settings(),
                )
            else:
                path = settings.resolved_chroma_path
                path.mkdir(parents=True, exist_ok=True)
                client = chromadb.PersistentClient(path=str(path), settings=_chroma_settings())
        _clients[key] = client
        return client


def forget_client(settings: Settings) -> None:
    """Drop the cached client (tests that stop a server, or after a location error)."""
    key = settings.chroma_url or str(settings.resolved_chroma_path.resolve())
    with _clients_lock:
        _clients.pop(key, None)


CHROMA_DOWN = "the document store (Chroma) is unavailable; try again shortly"


@contextmanager
def chroma_errors(settings: Settings) -> Iterator[None]:
    """Turn Chroma's connection failures into UnavailableError and missing collections into NotFoundError."""
    import httpx
    from chromadb.errors import NotFoundError as ChromaNotFound

    try:
        yield
    except ChromaNotFound as exc:
        raise NotFoundError(str(exc)) from None
    except (httpx.TransportError, ConnectionError) as exc:
        raise UnavailableError(
            f"Chroma at {describe_location(settings)} is unreachable: {exc}", public=CHROMA_DOWN
        ) from None
    except ValueError as exc:
        if "Could not connect" in str(exc):
            raise UnavailableError(
                f"Chroma at {describe_location(settings)} is unreachable: {exc}", public=CHROMA_DOWN
            ) from None
        raise


def get_collection(settings: Settings, name: str) -> Collection:
    """An existing Candor chunk collection; NotFoundError if there is none."""
    validate_collection_name(name)
    client = get_client(settings)
    with chroma_errors(settings):
        try:
            return client.get_collection(name)
        except NotFoundError:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                raise NotFoundError(f"no collection named {name!r}") from None
            raise


def get_manifest_collection(settings: Settings, name: str) -> Collection | None:
    client = get_client(settings)
    with chroma_errors(settings):
        try:
            return client.get_collection(manifest_name(name))
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise


def _is_not_found(exc: Exception) -> bool:
    from chromadb.errors import NotFoundError as ChromaNotFound

    return isinstance(exc, ChromaNotFound) or "does not exist" in str(exc)


def create_collections(settings: Settings, name: str, metadata: dict[str, Any]) -> tuple[Collection, Collection]:
    """Create (or open) the manifest and then the chunk collection, in that order.

    The manifest first: a chunk collection never exists without its manifest,
    so chunks are never unaccounted for.
    """
    client = get_client(settings)
    with chroma_errors(settings):
        manifest = client.get_or_create_collection(
            manifest_name(name), embedding_function=None, metadata={"candor_role": "manifest", "candor_of": name}
        )
        chunks = client.get_or_create_collection(
            name,
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
            metadata=metadata,
        )
    return chunks, manifest


def drop_collections(settings: Settings, name: str) -> bool:
    """Delete the manifest, then the chunks.

    With creation in the opposite order, "chunks without a manifest" can only
    mean an interrupted delete (the next ingest finishes it), and "manifest
    without chunks" only a creation in progress (left alone).
    """
    client = get_client(settings)
    found = False
    with chroma_errors(settings):
        for cname in (manifest_name(name), name):
            try:
                client.delete_collection(cname)
                found = True
            except Exception as exc:
                if not _is_not_found(exc):
                    raise
    return found


def list_collection_names(settings: Settings) -> list[str]:
    """Names of Candor chunk collections (manifests and foreign names are left out)."""
    client = get_client(settings)
    with chroma_errors(settings):
        names = [c.name if hasattr(c, "name") else str(c) for c in client.list_collections()]
    return sorted(n for n in names if _NAME_RE.match(n))


def iter_ids(
    collection: Collection, where: dict[str, Any] | None = None, metadata: bool = True
) -> Iterator[tuple[str, dict]]:
    """All (id, metadata) of a collection, page by page, so large collections do not come in one reply."""
    offset = 0
    while True:
        page = collection.get(where=where, include=["metadatas"] if metadata else [], limit=PAGE, offset=offset)
        ids = page["ids"]
        metas = page.get("metadatas") or [None] * len(ids)
        for cid, meta in zip(ids, metas, strict=True):
            yield cid, (meta or {})
        if len(ids) < PAGE:
            return
        offset += PAGE


def check_chroma(settings: Settings) -> bool:
    """Readiness probe: True when Chroma answers; UnavailableError (with the reason) when not."""
    client = get_client(settings)
    with chroma_errors(settings):
        client.heartbeat()
    return True
