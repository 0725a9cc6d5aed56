"""Flags as JSONL rows for the retraining pipeline (issue 6 reads this).

One row per flag, ordered by flag id (= creation order; an updated flag keeps
its place), so the same database gives byte-identical files and DVC sees a
change only when the flags did. Each row carries what the pairs builder needs
without the database: the question, the history the prompt kept, the context
passages exactly as they went into the prompt, the answer, the verdict, the
correction, who flagged and when, and which adapter answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from candor import jsonl
from candor.feedback.answers import answer_out
from candor.feedback.flags import flag_out, parse_review_status, parse_verdict
from candor.feedback.models import AnswerRow, FlagRow
from candor.feedback.schemas import Answer, Flag, ReviewStatus, Verdict

EXPORT_FORMAT = 1  # bump when a row's fields change meaning
BATCH = 500


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def export_row(flag: Flag, answer: Answer) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "flag_id": flag.id,
        "answer_id": answer.id,
        "verdict": flag.verdict.value,
        "correction": flag.correction,
        "comment": flag.comment,
        "api_key_id": flag.api_key_id,
        "flagged_at": _iso(flag.created_at),
        "flag_updated_at": _iso(flag.updated_at),
        "review_status": flag.review_status.value,
        "question": answer.question,
        "history": answer.prompt_history,
        "collection": answer.collection,
        "contexts": [
            {
                "text": c.prompt_text,
                "title": c.title,
                "chunk_id": c.chunk_id,
                "doc_id": c.doc_id,
                "source": c.source,
                "score": c.score,
                "text_sha256": c.text_sha256,
                "answerable": c.answerable,  # the reader's P(answerable) for this passage, where one ran
                "evidence_start": c.evidence_start,  # its evidence span in ``text``
                "evidence_end": c.evidence_end,
            }
            for c in answer.chunks
            if c.prompt_text is not None
        ],
        "prompt_version": answer.prompt_version,
        "answer": answer.answer,
        "raw_answer": answer.raw_answer,
        "refused": answer.refused,
        "refusal_layer": answer.refusal_layer.value if answer.refusal_layer else None,
        "grounded": answer.grounded,
        "model_base": answer.model_base,
        "adapter": answer.adapter,
        "adapter_version": answer.adapter_version,
        "answerability_model": answer.answerability_model,
        "answerability_threshold": answer.answerability_threshold,
        "answered_at": _iso(answer.created_at),
        "answer_api_key_id": answer.api_key_id,
    }


def export_batch(
    session: Session,
    *,
    after: str | None,
    review_statuses: Sequence[str | ReviewStatus] = (ReviewStatus.APPROVED,),
    verdicts: Sequence[str | Verdict] | None = None,
    collections: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = BATCH,
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows with flag id > ``after``, in flag-id order."""
    stmt = (
        select(FlagRow, AnswerRow)
        .join(AnswerRow, FlagRow.answer_id == AnswerRow.id)
        .options(selectinload(AnswerRow.chunks))
        .where(FlagRow.review_status.in_([parse_review_status(s).value for s in review_statuses]))
        .order_by(FlagRow.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(FlagRow.id > after)
    if verdicts is not None:
        stmt = stmt.where(FlagRow.verdict.in_([parse_verdict(v).value for v in verdicts]))
    if collections is not None:
        stmt = stmt.where(AnswerRow.collection.in_(list(collections)))
    if since is not None:
        stmt = stmt.where(FlagRow.created_at >= since)
    if until is not None:
        stmt = stmt.where(FlagRow.created_at < until)
    rows = []
    for flag_row, answer_row in session.execute(stmt):
        answer = answer_out(answer_row, with_flags=False)  # the row needs only this flag
        rows.append(export_row(flag_out(flag_row), answer))
    return rows


def dumps(row: dict[str, Any]) -> str:
    """One export line: sorted keys, UTF-8 kept, no spaces after separators (byte-stable); the file is
    ``candor.jsonl.write_jsonl(path, rows, compact=True)``."""
    return jsonl.dumps(row, compact=True)
