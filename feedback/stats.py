"""Counts per adapter version, for /metrics and the retraining loop's rollback check (issue 6).

Rejected flags are not counted: an admin judged them noise. Failures are
counted apart from answers (no model output exists to flag).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from candor.feedback.models import AnswerRow, FlagRow
from candor.feedback.schemas import AdapterStats, AnswerStatus, ReviewStatus

Version = tuple[str | None, str | None]


def adapter_stats(session: Session, since: datetime | None = None) -> list[AdapterStats]:
    ok = AnswerRow.status == AnswerStatus.OK.value
    answers = select(
        AnswerRow.adapter,
        AnswerRow.adapter_version,
        func.sum(case((ok, 1), else_=0)),
        func.sum(case((ok & AnswerRow.refused.is_(True), 1), else_=0)),
        func.sum(case((ok, 0), else_=1)),
    ).group_by(AnswerRow.adapter, AnswerRow.adapter_version)
    flags = (
        select(AnswerRow.adapter, AnswerRow.adapter_version, FlagRow.verdict, func.count())
        .join(AnswerRow, FlagRow.answer_id == AnswerRow.id)
        .where(FlagRow.review_status != ReviewStatus.REJECTED.value)
        .group_by(AnswerRow.adapter, AnswerRow.adapter_version, FlagRow.verdict)
    )
    if since is not None:
        answers = answers.where(AnswerRow.created_at >= since)
        flags = flags.where(AnswerRow.created_at >= since)
    by_verdict: dict[Version, dict[str, int]] = {}
    for adapter, version, verdict, n in session.execute(flags):
        by_verdict.setdefault((adapter, version), {})[verdict] = int(n)
    out = []
    for adapter, version, n_ok, n_refused, n_failed in session.execute(answers):
        verdicts = dict(sorted(by_verdict.get((adapter, version), {}).items()))
        out.append(
            AdapterStats(
                adapter=adapter,
                adapter_version=version,
                answers=int(n_ok or 0),
                refusals=int(n_refused or 0),
                failures=int(n_failed or 0),
                flags=sum(verdicts.values()),
                flags_by_verdict=verdicts,
            )
        )
    out.sort(key=lambda s: (s.adapter or "", s.adapter_version or ""))
    return out
