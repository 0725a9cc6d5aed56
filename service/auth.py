"""API keys and who may do what.

Keys are stored hashed by the answer store; a request presents one as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Users chat and flag
their own answers; admins also ingest, read every answer and export. A key may
be limited to some collections. ``CANDOR_AUTH_DISABLED=true`` (local demos
only) makes every request an admin and logs a warning at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request, status


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    role: str  # "user" | "admin"
    collections: frozenset[str] | None  # None: every collection
    trusted: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require_collection(self, collection: str) -> None:
        if not self.can_use(collection):
            # 404, not 403: a key limited to other collections learns nothing about this one
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"collection {collection!r} not found")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an admin key")


ANONYMOUS_ADMIN = Principal(key_id=None, role="admin", collections=None, trusted=True)


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None
