"""POST /v1/chat: Candor's own chat route (JSON or server-sent events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from candor.errors import CandorError
from candor.service.answering import AnswerRequest
from candor.service.deps import PrincipalDep, Services, ServicesDep
from candor.service.errors import error_payload, request_id_of
from candor.service.schemas import ChatRequest, ChatResponse
from candor.service.sse import prepend, sse_event

router = APIRouter(tags=["chat"])


def to_answer_request(body: ChatRequest, key_id: str | None) -> AnswerRequest:
    return AnswerRequest(
        question=body.question,
        collection=body.collection,
        top_k=body.top_k,
        history=[t.model_dump() for t in body.history],
        api_key_id=key_id,
    )


async def _events(
    services: Services, stream: AsyncIterator[dict[str, Any]], collection: str, request_id: str | None
) -> AsyncIterator[bytes]:
    try:
        async for ev in stream:
            if ev["event"] == "token":
                yield sse_event({"text": ev["text"]}, "token")
            else:
                result = ev["result"]
                services.metrics.observe_answer(result, collection)
                yield sse_event(result.to_dict(), "done")
    except CandorError as exc:
        status, body = error_payload(exc, request_id)
        services.metrics.failures.labels(type(exc).__name__).inc()
        yield sse_event({**body, "status": status}, "error")


@router.post(
    "/v1/chat",
    response_model=ChatResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    summary="Answer a question from a collection, or refuse",
)
async def chat(body: ChatRequest, principal: PrincipalDep, services: ServicesDep, request: Request):
    principal.require_collection(body.collection)
    req = to_answer_request(body, principal.key_id)
    if not body.stream:
        result = await services.engine.answer(req)
        services.metrics.observe_answer(result, body.collection)
        return result.to_dict()
    stream = services.engine.stream(req)
    first = await stream.__anext__()  # failures before the first event are plain HTTP errors
    return StreamingResponse(
        _events(services, prepend(first, stream), body.collection, request_id_of(request)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
