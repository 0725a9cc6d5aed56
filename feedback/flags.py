"""Flags (user feedback on answers) and their review.

One flag per (answer, API key), updatable: a second submission by the same
key replaces its verdict, correction and comment (a user changing their mind
must not count twice, and a flood of re-submissions must not multiply in
training). Flags given without a key (auth disabled, the local operator) share
one slot per answer. Flags from trusted keys are approved at once; flags from
untrusted keys start ``pending`` until an admin approves or rejects them
(``candor feedback review``); only approved flags reach the retraining export.
A re-submission that changes anything goes back to review; one that changes
nothing (a client retry) keeps its review status.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from sqlalchemy import and_, case, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from candor.errors import InvalidInputError, NotFoundError
from candor.feedback.ids import keyset_page, new_id, utcnow
from candor.feedback.models import NO_KEY, AnswerRow, ApiKeyRow, FlagRow
from candor.feedback.schemas import AnswerStatus, Flag, FlagPage, ReviewStatus, Verdict
from candor.text import storable_or_invalid

E = TypeVar("E", bound=StrEnum)
MAX_TEXT = 10_000
# Which verdicts make sense for which answers: a refusal cannot be a hallucination.
_FOR_ANSWERED = {Verdict.HALLUCINATION, Verdict.SHOULD_HAVE_REFUSED, Verdict.CORRECT}
_FOR_REFUSED = {Verdict.WRONG_REFUSAL, Verdict.CORRECT}


def parse_choice(kind: type[E], value: str | E, what: str) -> E:
    """``value`` as a member of the string enum ``kind``; InvalidInputError naming the choices if it is none."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidInputError(f"unknown {what} {value!r}: use one of {', '.join(m.value for m in kind)}") from None


def parse_verdict(value: str | Verdict) -> Verdict:
    return parse_choice(Verdict, value, "verdict")


def parse_review_status(value: str | ReviewStatus) -> ReviewStatus:
    return parse_choice(ReviewStatus, value, "review status")


def _clean(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    text = storable_or_invalid(text, what).strip()
    if len(text) > MAX_TEXT:
        raise InvalidInputError(f"{what} is {len(text)} characters; the limit is {MAX_TEXT}")
    return text or None


def flag_out(row: FlagRow) -> Flag:
    return Flag.model_validate(row, from_attributes=True)


def add_feedback(
    session: Session,
    answer_id: str,
    verdict: str | Verdict,
    correction: str | None = None,
    comment: str | None = None,
    api_key_id: str | None = None,
    trusted: bool | None = None,
) -> Flag:
    """Create or update the flag of ``api_key_id`` on ``answer_id``.

    ``trusted`` overrides the key's own setting (None: use the key's; no key:
    trusted, since only the local operator has no key).
    """
    verdict_ = parse_verdict(verdict)
    correction = _clean(correction, "correction")
    comment = _clean(comment, "comment")
    answer = session.get(AnswerRow, answer_id)
    if answer is None:
        raise NotFoundError(f"answer {answer_id!r} not found")
    if answer.status != AnswerStatus.OK:
        raise InvalidInputError(f"answer {answer_id!r} failed (no answer was given): there is nothing to flag")
    allowed = _FOR_REFUSED if answer.refused else _FOR_ANSWERED
    if verdict_ not in allowed:
        kind = "a refusal" if answer.refused else "an answer that was given"
        raise InvalidInputError(
            f"verdict {verdict_.value!r} does not apply to {kind}: use one of "
            + ", ".join(sorted(v.value for v in allowed))
        )
    if api_key_id is not None:
        key = session.get(ApiKeyRow, api_key_id)
        if key is None or key.revoked_at is not None:
            raise InvalidInputError(f"API key {api_key_id!r} is unknown or revoked")
        if trusted is None:
            trusted = key.trusted
    elif trusted is None:
        trusted = True
    status = ReviewStatus.APPROVED if trusted else ReviewStatus.PENDING
    now = utcnow()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(FlagRow).values(
        id=new_id(now),
        answer_id=answer_id,
        api_key_id=api_key_id,
        flagger=api_key_id or NO_KEY,
        verdict=verdict_.value,
        correction=correction,
        comment=comment,
        created_at=now,
        updated_at=now,
        review_status=status.value,
    )
    new = stmt.excluded
    unchanged = and_(
        FlagRow.verdict == new.verdict,
        FlagRow.correction.is_not_distinct_from(new.correction),
        FlagRow.comment.is_not_distinct_from(new.comment),
    )
    keep_review = and_(unchanged, FlagRow.review_status != ReviewStatus.PENDING.value)
    stmt = stmt.on_conflict_do_update(
        index_elements=[FlagRow.answer_id, FlagRow.flagger],
        set_={
            "verdict": new.verdict,
            "correction": new.correction,
            "comment": new.comment,
            "updated_at": case((unchanged, FlagRow.updated_at), else_=new.updated_at),
            # a trusted key's change is approved again; otherwise back to review unless unchanged
            "review_status": case((keep_review, FlagRow.review_status), else_=new.review_status),
            "reviewed_by": case((keep_review, FlagRow.reviewed_by), else_=None),
            "reviewed_at": case((keep_review, FlagRow.reviewed_at), else_=None),
            "review_note": case((keep_review, FlagRow.review_note), else_=None),
        },
    ).returning(FlagRow.id)
    flag_id = session.execute(stmt).scalar_one()
    row = session.scalars(select(FlagRow).where(FlagRow.id == flag_id).execution_options(populate_existing=True)).one()
    return flag_out(row)


def review_flags(
    session: Session,
    flag_ids: Sequence[str],
    status: str | ReviewStatus,
    reviewer: str | None = None,
    note: str | None = None,
) -> list[Flag]:
    """Approve or reject flags (all or none: an unknown id fails the whole call)."""
    status_ = parse_review_status(status)
    if status_ == ReviewStatus.PENDING:
        raise InvalidInputError("a review approves or rejects: use 'approved' or 'rejected'")
    ids = list(dict.fromkeys(flag_ids))
    if not ids:
        raise InvalidInputError("no flag ids given")
    rows = {r.id: r for r in session.scalars(select(FlagRow).where(FlagRow.id.in_(ids)))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFoundError(f"flag(s) not found: {', '.join(missing)}")
    now = utcnow()
    for row in rows.values():
        row.review_status = status_.value
        row.reviewed_by = _clean(reviewer, "reviewer")
        row.reviewed_at = now
        row.review_note = _clean(note, "note")
    session.flush()
    return [flag_out(rows[i]) for i in ids]


def get_flag(session: Session, flag_id: str) -> Flag:
    row = session.get(FlagRow, flag_id)
    if row is None:
        raise NotFoundError(f"flag {flag_id!r} not found")
    return flag_out(row)


def list_flags(
    session: Session,
    review_status: str | ReviewStatus | None = None,
    verdict: str | Verdict | None = None,
    api_key_id: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> FlagPage:
    """Flags oldest first (a review queue is worked from the front); cursor = last flag id seen."""
    if not 1 <= limit <= 1000:
        raise InvalidInputError("limit must be between 1 and 1000")
    stmt = select(FlagRow).order_by(FlagRow.id).limit(limit + 1)
    if review_status is not None:
        stmt = stmt.where(FlagRow.review_status == parse_review_status(review_status).value)
    if verdict is not None:
        stmt = stmt.where(FlagRow.verdict == parse_verdict(verdict).value)
    if api_key_id is not None:
        stmt = stmt.where(FlagRow.api_key_id == api_key_id)
    if since is not None:
        stmt = stmt.where(FlagRow.created_at >= since)
    return keyset_page(session, stmt, FlagRow.id, cursor, limit, flag_out, FlagPage, newest_first=False)
