"""API keys: created with a secret shown once, stored as its sha256, checked in constant time.

The secret is 32 random bytes (``secrets.token_urlsafe``), so a plain sha256 is
enough: there is nothing to brute-force that a slow hash would protect. The
``cnd_`` prefix lets secret scanners and people recognise a leaked key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from candor.errors import InvalidInputError, NotFoundError
from candor.feedback.ids import new_id, utcnow
from candor.feedback.models import ApiKeyRow
from candor.feedback.schemas import ApiKey, Role
from candor.text import storable_or_invalid

SECRET_PREFIX = "cnd_"
MAX_NAME = 200


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_out(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        collections=list(row.collections) if row.collections is not None else None,
        trusted=row.trusted,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _check_new_key(name: str, role: str, collections: Sequence[str] | None) -> tuple[str, Role, list[str] | None]:
    name = storable_or_invalid(name, "key name").strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidInputError(f"a key needs a name of 1 to {MAX_NAME} characters")
    try:
        role_ = Role(role)
    except ValueError:
        raise InvalidInputError(f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}") from None
    if collections is None:
        return name, role_, None
    cols = sorted({storable_or_invalid(c, "collection").strip() for c in collections if c and c.strip()})
    if not cols:
        raise InvalidInputError("a key limited to no collection could do nothing: leave collections unset for all")
    return name, role_, cols


def create_key(
    session: Session, name: str, role: str, collections: Sequence[str] | None, trusted: bool
) -> tuple[ApiKey, str]:
    name, role_, cols = _check_new_key(name, role, collections)
    secret = new_secret()
    now = utcnow()
    row = ApiKeyRow(
        id=new_id(now),
        name=name,
        role=role_.value,
        collections=cols,
        trusted=trusted,
        secret_hash=hash_secret(secret),
        created_at=now,
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    return key_out(row), secret


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The active key with this secret, or None (unknown, revoked, or not a Candor key)."""
    if not secret or not secret.startswith(SECRET_PREFIX) or len(secret) > 200:
        return None
    digest = hash_secret(secret)
    row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.secret_hash == digest)).one_or_none()
    if row is None or not hmac.compare_digest(row.secret_hash, digest) or row.revoked_at is not None:
        return None
    return key_out(row)


def get_key(session: Session, key_id: str) -> ApiKeyRow:
    row = session.get(ApiKeyRow, key_id)
    if row is None:
        raise NotFoundError(f"API key {key_id!r} not found")
    return row


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke (idempotent): the key stops authenticating, its answers and flags stay."""
    row = get_key(session, key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return key_out(row)


def list_keys(session: Session, include_revoked: bool = True) -> list[ApiKey]:
    stmt = select(ApiKeyRow).order_by(ApiKeyRow.id)
    if not include_revoked:
        stmt = stmt.where(ApiKeyRow.revoked_at.is_(None))
    return [key_out(r) for r in session.scalars(stmt)]
