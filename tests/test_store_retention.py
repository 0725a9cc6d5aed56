"""Retention (purge older than) and erasure of everything one key produced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fixtures.store import backdate

from candor.errors import InvalidInputError, NotFoundError
from candor.feedback.retention import parse_duration, parse_when


def test_purge_deletes_old_answers_with_their_flags_and_chunks(store, make_answer):
    old, recent = make_answer(), make_answer()
    store.add_feedback(old, "hallucination")
    store.add_feedback(recent, "hallucination")
    backdate(store, old, days=40)
    assert store.count_older_than(timedelta(days=30)).model_dump() == {"answers": 1, "flags": 1}
    result = store.purge_older_than(timedelta(days=30))
    assert (result.answers, result.flags) == (1, 1)
    with pytest.raises(NotFoundError):
        store.get_answer(old)
    assert [a.id for a in store.list_answers().items] == [recent]
    assert len(list(store.export_flags())) == 1
    with store.engine.connect() as conn:  # no orphaned chunks
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM answer_chunks WHERE answer_id = :a"), {"a": old}).scalar() == 0
    assert store.purge_older_than(timedelta(days=30)).answers == 0


def test_purge_works_in_batches(store, make_answer, monkeypatch):
    from candor.feedback import retention

    monkeypatch.setattr(retention, "BATCH", 3)
    ids = [make_answer() for _ in range(7)]
    for i in ids:
        backdate(store, i, days=2)
    assert store.purge_older_than(timedelta(days=1)).answers == 7
    assert store.list_answers().items == []


def test_erase_key_removes_everything_it_produced(store, make_answer):
    alice, alice_secret = store.create_key("alice", "user", None, False)
    bob, _ = store.create_key("bob", "user", None, False)
    alice_answer = make_answer(api_key_id=alice)
    bob_answer = make_answer(api_key_id=bob)
    store.add_feedback(alice_answer, "hallucination", api_key_id=bob)  # bob's flag on alice's answer
    store.add_feedback(bob_answer, "hallucination", api_key_id=alice)  # alice's flag on bob's answer
    store.add_feedback(bob_answer, "should_have_refused", api_key_id=bob)
    result = store.erase_key(alice)
    assert (result.answers, result.flags, result.key_revoked) == (1, 2, True)
    assert store.authenticate(alice_secret) is None
    with pytest.raises(NotFoundError):
        store.get_answer(alice_answer)
    remaining = store.get_answer(bob_answer)
    assert [f.api_key_id for f in remaining.flags] == [bob]
    assert all(r["api_key_id"] != alice for r in store.export_flags(review_statuses=["pending", "approved"]))
    assert store.get_key(alice).revoked_at is not None  # kept, revoked, for audits
    with pytest.raises(NotFoundError):
        store.erase_key("01J000000000000000000000ZZ")


def test_purge_rejects_non_positive_period(store):
    with pytest.raises(InvalidInputError):
        store.purge_older_than(timedelta(0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
        ("7", timedelta(days=7)),
        (" 3D ", timedelta(days=3)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "-3d", "3y", "1.5d", "0d", "soon"])
def test_parse_duration_rejects(text):
    with pytest.raises(InvalidInputError):
        parse_duration(text)


def test_parse_when():
    assert parse_when("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_when("2026-11-01T12:00:00Z") == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert parse_when("2026-11-01T13:00:00+01:00") == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert abs(parse_when("7d") - (datetime.now(UTC) - timedelta(days=7))) < timedelta(seconds=5)
    with pytest.raises(InvalidInputError):
        parse_when("last tuesday")
