"""Retention and erasure: deleting old answers, and everything one API key produced.

Deletes run in batches, each its own short write transaction, so purging a
large log never holds SQLite's write lock for long (the API keeps logging in
between). Chunks and flags of a deleted answer go with it (ON DELETE CASCADE).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from candor.errors import InvalidInputError
from candor.feedback.models import AnswerRow, FlagRow

BATCH = 500
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '2w', '45s' → timedelta (a bare number is days)."""
    if text.strip().isdigit():
        text = text.strip() + "d"
    m = _DURATION.match(text)
    if not m:
        raise InvalidInputError(f"invalid duration {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 2w")
    delta = timedelta(**{_UNITS[m.group(2).lower()]: int(m.group(1))})
    if delta <= timedelta(0):
        raise InvalidInputError("the duration must be positive")
    return delta


def _delete_answers(session: Session, ids: list[str]) -> tuple[int, int]:
    if not ids:
        return 0, 0
    n_flags = session.scalar(select(func.count()).select_from(FlagRow).where(FlagRow.answer_id.in_(ids))) or 0
    session.execute(delete(AnswerRow).where(AnswerRow.id.in_(ids)).execution_options(synchronize_session=False))
    return len(ids), n_flags


def purge_batch(session: Session, cutoff: datetime, batch: int = BATCH) -> tuple[int, int]:
    """Delete up to ``batch`` answers created before ``cutoff``; returns (answers, flags) deleted."""
    ids = list(
        session.scalars(select(AnswerRow.id).where(AnswerRow.created_at < cutoff).order_by(AnswerRow.id).limit(batch))
    )
    return _delete_answers(session, ids)


def count_older(session: Session, cutoff: datetime) -> tuple[int, int]:
    answers = session.scalar(select(func.count()).select_from(AnswerRow).where(AnswerRow.created_at < cutoff))
    flags = session.scalar(
        select(func.count())
        .select_from(FlagRow)
        .join(AnswerRow, FlagRow.answer_id == AnswerRow.id)
        .where(AnswerRow.created_at < cutoff)
    )
    return answers or 0, flags or 0


def erase_flags_batch(session: Session, key_id: str, batch: int = BATCH) -> int:
    """Delete up to ``batch`` flags given by ``key_id``."""
    ids = list(session.scalars(select(FlagRow.id).where(FlagRow.api_key_id == key_id).limit(batch)))
    if ids:
        session.execute(delete(FlagRow).where(FlagRow.id.in_(ids)).execution_options(synchronize_session=False))
    return len(ids)


def erase_answers_batch(session: Session, key_id: str, batch: int = BATCH) -> tuple[int, int]:
    """Delete up to ``batch`` answers asked with ``key_id`` (and any flags on them)."""
    ids = list(session.scalars(select(AnswerRow.id).where(AnswerRow.api_key_id == key_id).limit(batch)))
    return _delete_answers(session, ids)


def parse_when(text: str) -> datetime:
    """A point in time: an ISO date/time (UTC if no zone given) or an age like '7d' (= 7 days ago)."""
    raw = text.strip()
    if raw and raw[-1].lower() in _UNITS and raw[:-1].strip().isdigit():
        return datetime.now(UTC) - parse_duration(raw)
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"invalid time {text!r}: use an ISO date/time (2026-11-01, 2026-11-01T12:00Z) or an age (7d, 12h)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
