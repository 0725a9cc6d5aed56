"""The answer log over HTTP: read answers, flag them, export flags (admin)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from candor.service.auth import Principal
from candor.service.deps import AdminDep, PrincipalDep, ServicesDep
from candor.service.schemas import AnswerPage, FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["answers"])


def _visible(principal: Principal, answer: Any) -> bool:
    if principal.is_admin:
        return principal.can_use(answer.collection)
    return answer.api_key_id == principal.key_id and principal.can_use(answer.collection)


async def _load_visible(services: Any, principal: Principal, answer_id: str) -> Any:
    answer = await anyio.to_thread.run_sync(services.store.get_answer, answer_id)
    if not _visible(principal, answer):
        raise HTTPException(404, f"answer {answer_id!r} not found")
    return answer


@router.get("/v1/answers/{answer_id}", summary="One logged answer with its flags")
async def get_answer(answer_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    answer = await _load_visible(services, principal, answer_id)
    return answer.to_dict()


@router.get("/v1/answers", response_model=AnswerPage, summary="Logged answers, newest first")
async def list_answers(
    principal: PrincipalDep,
    services: ServicesDep,
    flagged: bool | None = None,
    collection: Annotated[str | None, Query(max_length=128)] = None,
    verdict: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> dict[str, Any]:
    if collection is not None:
        principal.require_collection(collection)
    page = await anyio.to_thread.run_sync(
        lambda: services.store.list_answers(
            flagged=flagged,
            collection=collection,
            collections=None if principal.collections is None else sorted(principal.collections),
            api_key_id=None if principal.is_admin else principal.key_id,
            verdict=verdict,
            limit=limit,
            cursor=cursor,
        )
    )
    return {"items": [a.to_dict() for a in page.items], "next_cursor": page.next_cursor}


@router.post(
    "/v1/answers/{answer_id}/feedback",
    response_model=FeedbackResponse,
    status_code=201,
    summary="Flag an answer (hallucination, correct, should_have_refused, wrong_refusal)",
)
async def add_feedback(
    answer_id: str, body: FeedbackRequest, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    await _load_visible(services, principal, answer_id)
    flag = await anyio.to_thread.run_sync(
        lambda: services.store.add_feedback(
            answer_id,
            verdict=body.verdict,
            correction=body.correction,
            comment=body.comment,
            api_key_id=principal.key_id,
            trusted=principal.trusted,
        )
    )
    services.metrics.flags.labels(body.verdict).inc()
    return {
        "feedback_id": flag.id,
        "answer_id": answer_id,
        "verdict": str(flag.verdict),
        "review_status": str(flag.review_status),
    }


@router.get("/v1/feedback/export", summary="Flagged answers as JSONL, for retraining (admin)")
async def export_feedback(principal: AdminDep, services: ServicesDep) -> StreamingResponse:
    rows = await anyio.to_thread.run_sync(lambda: list(services.store.export_flags()))
    rows = [r for r in rows if principal.can_use(r["collection"])]

    async def body():
        for row in rows:
            yield (json.dumps(row, ensure_ascii=False) + "\n").encode()

    return StreamingResponse(body(), media_type="application/x-ndjson")
