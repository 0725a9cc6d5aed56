"""Flags: one per (answer, key), updatable; review of untrusted flags; verdict checks."""

from __future__ import annotations

import pytest

from candor.errors import InvalidInputError, NotFoundError
from candor.feedback.schemas import ReviewStatus, Verdict


def test_untrusted_flag_is_pending_and_trusted_is_approved(store, make_answer):
    answer_id = make_answer()
    user, _ = store.create_key("user", "user", None, trusted=False)
    admin, _ = store.create_key("admin", "admin", None, trusted=True)
    f_user = store.add_feedback(answer_id, "hallucination", correction="  Rollo of Normandy ", api_key_id=user)
    f_admin = store.add_feedback(answer_id, Verdict.SHOULD_HAVE_REFUSED, comment="not in docs", api_key_id=admin)
    assert f_user.review_status is ReviewStatus.PENDING and f_user.correction == "Rollo of Normandy"
    assert f_admin.review_status is ReviewStatus.APPROVED and f_admin.comment == "not in docs"
    assert f_user.id != f_admin.id
    flags = store.get_answer(answer_id).flags
    assert {(f.api_key_id, f.verdict) for f in flags} == {
        (user, Verdict.HALLUCINATION),
        (admin, Verdict.SHOULD_HAVE_REFUSED),
    }


def test_one_flag_per_answer_and_key_is_updated(store, make_answer):
    answer_id = make_answer()
    key, _ = store.create_key("k", "user", None, trusted=False)
    first = store.add_feedback(answer_id, "hallucination", api_key_id=key)
    second = store.add_feedback(answer_id, "correct", comment="I was wrong", api_key_id=key)
    assert second.id == first.id and second.created_at == first.created_at
    assert second.verdict is Verdict.CORRECT and second.comment == "I was wrong"
    assert second.updated_at >= first.updated_at
    assert len(store.get_answer(answer_id).flags) == 1


def test_flags_without_a_key_share_one_slot_and_are_trusted(store, make_answer):
    answer_id = make_answer()
    a = store.add_feedback(answer_id, "hallucination")
    b = store.add_feedback(answer_id, "should_have_refused")
    assert a.id == b.id and b.review_status is ReviewStatus.APPROVED and b.api_key_id is None


def test_resubmission_keeps_review_only_when_unchanged(store, make_answer):
    answer_id = make_answer()
    key, _ = store.create_key("k", "user", None, trusted=False)
    flag = store.add_feedback(answer_id, "hallucination", correction="Rollo", api_key_id=key)
    store.review_flags([flag.id], "approved", reviewer="ana", note="checked the source")
    retry = store.add_feedback(answer_id, "hallucination", correction="Rollo", api_key_id=key)
    assert retry.review_status is ReviewStatus.APPROVED and retry.reviewed_by == "ana"
    assert retry.updated_at == store.get_flag(flag.id).updated_at
    changed = store.add_feedback(answer_id, "hallucination", correction="William", api_key_id=key)
    assert changed.review_status is ReviewStatus.PENDING and changed.reviewed_by is None
    assert changed.correction == "William"


def test_trust_can_be_overridden_by_the_caller(store, make_answer):
    key, _ = store.create_key("k", "user", None, trusted=True)
    flag = store.add_feedback(make_answer(), "hallucination", api_key_id=key, trusted=False)
    assert flag.review_status is ReviewStatus.PENDING


def test_bad_verdicts_and_mismatches_are_invalid_input(store, make_answer):
    answered, refused = make_answer(), make_answer(refused=True)
    with pytest.raises(InvalidInputError, match="unknown verdict 'lie'"):
        store.add_feedback(answered, "lie")
    with pytest.raises(InvalidInputError, match="does not apply to a refusal"):
        store.add_feedback(refused, "hallucination")
    with pytest.raises(InvalidInputError, match="does not apply to an answer"):
        store.add_feedback(answered, "wrong_refusal")
    assert store.add_feedback(refused, "wrong_refusal", correction="Rollo").verdict is Verdict.WRONG_REFUSAL
    assert store.add_feedback(answered, "correct").verdict is Verdict.CORRECT
    with pytest.raises(InvalidInputError, match="limit"):
        store.add_feedback(answered, "correct", comment="x" * 10_001)


def test_revoked_or_unknown_key_cannot_flag(store, make_answer):
    answer_id = make_answer()
    key, _ = store.create_key("k", "user", None, False)
    store.revoke_key(key)
    with pytest.raises(InvalidInputError, match="unknown or revoked"):
        store.add_feedback(answer_id, "hallucination", api_key_id=key)
    with pytest.raises(InvalidInputError, match="unknown or revoked"):
        store.add_feedback(answer_id, "hallucination", api_key_id="01J000000000000000000000ZZ")
    assert store.get_answer(answer_id).flags == []


def test_review_queue_and_decisions(store, make_answer):
    key, _ = store.create_key("k", "user", None, trusted=False)
    flags = [store.add_feedback(make_answer(), "hallucination", api_key_id=key) for _ in range(3)]
    pending = store.list_flags(review_status="pending", limit=2)
    assert [f.id for f in pending.items] == [flags[0].id, flags[1].id]  # oldest first
    rest = store.list_flags(review_status="pending", limit=2, cursor=pending.next_cursor)
    assert [f.id for f in rest.items] == [flags[2].id] and rest.next_cursor is None
    approved = store.review_flags([flags[0].id], "approved", reviewer="ana")
    rejected = store.review_flags([flags[1].id, flags[2].id], ReviewStatus.REJECTED, note="spam")
    assert approved[0].review_status is ReviewStatus.APPROVED and approved[0].reviewed_at is not None
    assert [f.review_status for f in rejected] == [ReviewStatus.REJECTED] * 2 and rejected[0].review_note == "spam"
    assert store.list_flags(review_status="pending").items == []
    assert [f.id for f in store.list_flags(review_status="rejected").items] == [flags[1].id, flags[2].id]


def test_review_errors(store, make_answer):
    flag = store.add_feedback(make_answer(), "hallucination")
    with pytest.raises(NotFoundError, match="01J000000000000000000000ZZ"):
        store.review_flags([flag.id, "01J000000000000000000000ZZ"], "rejected")
    assert store.get_flag(flag.id).review_status is ReviewStatus.APPROVED  # all or nothing
    with pytest.raises(InvalidInputError):
        store.review_flags([flag.id], "pending")
    with pytest.raises(InvalidInputError):
        store.review_flags([flag.id], "maybe")
    with pytest.raises(NotFoundError):
        store.get_flag("01J000000000000000000000ZZ")
