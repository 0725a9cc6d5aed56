"""API keys: secret shown once and stored hashed, authentication, revocation, listing."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from candor.errors import InvalidInputError, NotFoundError
from candor.feedback.keys import SECRET_PREFIX, hash_secret
from candor.feedback.schemas import Role


def test_create_and_authenticate(store):
    key_id, secret = store.create_key("ci bot", "admin", ["docs", "fresno", "docs"], trusted=True)
    assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
    key = store.authenticate(secret)
    assert key is not None and key.id == key_id and key.name == "ci bot"
    assert key.role is Role.ADMIN and key.is_admin and key.trusted
    assert key.collections == ["docs", "fresno"] and key.allows("docs") and not key.allows("other")
    other_id, other_secret = store.create_key("user", "user", None, trusted=False)
    assert other_secret != secret
    other = store.authenticate(other_secret)
    assert other.id == other_id and other.collections is None and other.allows("anything") and not other.trusted


def test_only_the_hash_is_stored(store):
    key_id, secret = store.create_key("k", "user", None, False)
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert len(rows) == 1 and rows[0]["secret_hash"] == hash_secret(secret)
    assert all(secret not in str(v) for v in rows[0].values())


@pytest.mark.parametrize("presented", ["", "cnd_", "cnd_wrong", "not-a-key", "cnd_" + "x" * 300])
def test_wrong_secrets_do_not_authenticate(store, presented):
    store.create_key("k", "user", None, False)
    assert store.authenticate(presented) is None


def test_revoke_stops_authentication(store):
    key_id, secret = store.create_key("k", "user", None, False)
    revoked = store.revoke_key(key_id)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.authenticate(secret) is None
    assert store.revoke_key(key_id).revoked_at == revoked.revoked_at  # idempotent
    assert [k.id for k in store.list_keys()] == [key_id]
    assert store.list_keys(include_revoked=False) == []
    with pytest.raises(NotFoundError):
        store.revoke_key("01J000000000000000000000ZZ")


@pytest.mark.parametrize(
    ("name", "role", "collections", "match"),
    [
        ("", "user", None, "name"),
        ("k", "root", None, "role"),
        ("k", "user", [], "no collection"),
        ("k", "user", [" "], "no collection"),
        ("x" * 201, "user", None, "name"),
    ],
)
def test_invalid_keys(store, name, role, collections, match):
    with pytest.raises(InvalidInputError, match=match):
        store.create_key(name, role, collections, False)
    assert store.list_keys() == []
