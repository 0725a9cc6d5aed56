"""Logging answers and failures, and reading them back.

One answer is one transaction: the answer row and its retrieved chunks commit
together or not at all. Failures (no answer was produced) are rows with
``status='failed'`` and the error, never an answer text, so they cannot be
flagged or exported as if the model had said something.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, selectinload

from candor.errors import ConflictError, InvalidInputError, NotFoundError
from candor.feedback.flags import flag_out, parse_choice, parse_verdict
from candor.feedback.ids import is_id, keyset_page, new_id, utcnow
from candor.feedback.models import AnswerRow, ApiKeyRow, ChunkRow, FlagRow
from candor.feedback.schemas import (
    Answer,
    AnswerPage,
    AnswerStatus,
    ChunkLog,
    NewAnswer,
    NewFailure,
    RefusalLayer,
    Timings,
    Verdict,
)
from candor.text import storable_or_invalid

R = TypeVar("R", NewAnswer, NewFailure)
MAX_LIMIT = 500


def coerce(record: R | Mapping[str, Any], kind: type[R]) -> R:
    """Accept the pydantic record or a plain mapping of its fields."""
    if isinstance(record, kind):
        return record
    try:
        return kind.model_validate(record)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInputError(f"invalid {kind.__name__} record: {problems}") from None


def _chunk_rows(chunks: Sequence[ChunkLog]) -> list[ChunkRow]:
    ranks = [c.rank for c in chunks]
    if len(set(ranks)) != len(ranks):
        raise InvalidInputError("chunk ranks must be distinct")
    return [ChunkRow(**c.model_dump()) for c in chunks]


def _base_row(session: Session, rec: NewAnswer | NewFailure, status: AnswerStatus) -> AnswerRow:
    now = utcnow()
    answer_id = rec.answer_id or new_id(now)
    if not is_id(answer_id):
        raise InvalidInputError(f"invalid answer id {answer_id!r}: use AnswerStore.new_answer_id()")
    if session.get(AnswerRow, answer_id) is not None:
        raise ConflictError(f"answer {answer_id!r} is already logged")
    if rec.api_key_id is not None and session.get(ApiKeyRow, rec.api_key_id) is None:
        raise InvalidInputError(f"API key {rec.api_key_id!r} is unknown")
    return AnswerRow(
        id=answer_id,
        created_at=now,
        status=status.value,
        question=rec.question,
        collection=rec.collection,
        history=[dict(t) for t in rec.history],
        history_in_prompt=rec.history_in_prompt,
        retrieval_query=rec.retrieval_query,
        prompt_version=rec.prompt_version,
        rendered_prompt=rec.rendered_prompt,
        model_base=rec.model_base,
        adapter=rec.adapter,
        adapter_version=rec.adapter_version,
        retrieval_ms=rec.timings_ms.retrieval,
        generation_ms=rec.timings_ms.generation,
        total_ms=rec.timings_ms.total,
        api_key_id=rec.api_key_id,
        meta=dict(rec.meta),
        chunks=_chunk_rows(rec.chunks),
    )


def log_answer(session: Session, rec: NewAnswer) -> str:
    row = _base_row(session, rec, AnswerStatus.OK)
    row.answer = rec.answer
    row.raw_answer = rec.raw_answer
    row.refused = rec.refused
    row.refusal_layer = rec.refusal_layer.value if rec.refusal_layer else None
    row.refusal_confidence = rec.refusal_confidence
    row.grounded = rec.grounded
    row.grounding_support = rec.grounding_support
    row.answerability_model = rec.answerability_model
    row.answerability_threshold = rec.answerability_threshold
    session.add(row)
    session.flush()
    return row.id


def log_failure(session: Session, rec: NewFailure) -> str:
    row = _base_row(session, rec, AnswerStatus.FAILED)
    row.error = rec.error
    session.add(row)
    session.flush()
    return row.id


def answer_out(row: AnswerRow, with_flags: bool = True) -> Answer:
    return Answer(
        id=row.id,
        created_at=row.created_at,
        status=AnswerStatus(row.status),
        question=row.question,
        collection=row.collection,
        history=list(row.history or []),
        history_in_prompt=row.history_in_prompt,
        retrieval_query=row.retrieval_query,
        chunks=[ChunkLog.model_validate(c, from_attributes=True) for c in row.chunks],
        prompt_version=row.prompt_version,
        rendered_prompt=row.rendered_prompt,
        model_base=row.model_base,
        adapter=row.adapter,
        adapter_version=row.adapter_version,
        answer=row.answer,
        raw_answer=row.raw_answer,
        refused=row.refused,
        refusal_layer=RefusalLayer(row.refusal_layer) if row.refusal_layer else None,
        refusal_confidence=row.refusal_confidence,
        grounded=row.grounded,
        grounding_support=row.grounding_support,
        answerability_model=row.answerability_model,
        answerability_threshold=row.answerability_threshold,
        timings_ms=Timings(retrieval=row.retrieval_ms, generation=row.generation_ms, total=row.total_ms),
        api_key_id=row.api_key_id,
        error=row.error,
        meta=dict(row.meta or {}),
        flags=[flag_out(f) for f in row.flags] if with_flags else [],
    )


def _with_children(stmt: Any) -> Any:
    return stmt.options(selectinload(AnswerRow.chunks), selectinload(AnswerRow.flags))


def get_answer(session: Session, answer_id: str) -> Answer:
    if not is_id(answer_id):  # not an id (a NUL, a path): not found on every backend, never a database error
        raise NotFoundError(f"answer {answer_id!r} not found")
    row = session.scalars(_with_children(select(AnswerRow).where(AnswerRow.id == answer_id))).one_or_none()
    if row is None:
        raise NotFoundError(f"answer {answer_id!r} not found")
    return answer_out(row)


def list_answers(
    session: Session,
    *,
    flagged: bool | None = None,
    collection: str | None = None,
    collections: Sequence[str] | None = None,
    api_key_id: str | None = None,
    verdict: str | Verdict | None = None,
    refused: bool | None = None,
    status: str | AnswerStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> AnswerPage:
    """Answers newest first, keyset-paginated by id (ids sort by time: stable under inserts).

    ``collections`` restricts to a key's allowed collections; ``verdict``
    implies flagged. ``next_cursor`` is None on the last page.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIMIT}")
    stmt = select(AnswerRow).order_by(AnswerRow.id.desc()).limit(limit + 1)
    flag_exists = exists().where(FlagRow.answer_id == AnswerRow.id)
    if verdict is not None:
        stmt = stmt.where(
            exists().where(FlagRow.answer_id == AnswerRow.id, FlagRow.verdict == parse_verdict(verdict).value)
        )
    if flagged is True:
        stmt = stmt.where(flag_exists)
    elif flagged is False:
        stmt = stmt.where(~flag_exists)
    if collection is not None:
        stmt = stmt.where(AnswerRow.collection == storable_or_invalid(collection, "collection"))
    if collections is not None:
        stmt = stmt.where(AnswerRow.collection.in_(list(collections)))
    if api_key_id is not None:
        stmt = stmt.where(AnswerRow.api_key_id == api_key_id)
    if refused is not None:
        stmt = stmt.where(AnswerRow.refused.is_(refused))
    if status is not None:
        stmt = stmt.where(AnswerRow.status == parse_choice(AnswerStatus, status, "status").value)
    if since is not None:
        stmt = stmt.where(AnswerRow.created_at >= since)
    if until is not None:
        stmt = stmt.where(AnswerRow.created_at < until)
    stmt = _with_children(stmt)
    return keyset_page(session, stmt, AnswerRow.id, cursor, limit, answer_out, AnswerPage, newest_first=True)
