"""OpenAI-compatible chat: ``model`` names the collection, so existing chat
clients (the official openai library, UIs) work against Candor.

The last message must come from the user: it is the question; earlier user and
assistant turns are the history. System messages are ignored: Candor's own
system prompt is the contract the model was trained on. Sampling parameters
are accepted and ignored (Candor answers greedily). Candor's extras (answer id,
citations, refusal) ride along in a ``candor`` field.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from candor.errors import CandorError, InvalidInputError
from candor.ingest.collections import list_collections
from candor.service.answering import AnswerRequest
from candor.service.deps import PrincipalDep, ServicesDep
from candor.service.errors import error_payload, request_id_of
from candor.service.schemas import COLLECTION_PATTERN
from candor.service.sse import prepend, sse_event
from candor.text import check_storable

router = APIRouter(tags=["openai"])


class OAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = Field(None)

    @field_validator("content")
    @classmethod
    def _storable(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        check_storable(_text(v))  # the question and the history are logged: no NUL, valid Unicode
        return v


class OAIChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(pattern=COLLECTION_PATTERN, description="The collection to answer from.")
    messages: list[OAIMessage] = Field(min_length=1, max_length=41)
    stream: bool = False


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def to_answer_request(body: OAIChatRequest, key_id: str | None) -> AnswerRequest:
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user" or not _text(turns[-1].content).strip():
        raise InvalidInputError("the last message must be a non-empty user message (the question)")
    history = [{"role": m.role, "content": _text(m.content)} for m in turns[:-1]]
    return AnswerRequest(
        question=_text(turns[-1].content), collection=body.model, history=history[-20:], api_key_id=key_id
    )


def _extras(result: Any) -> dict[str, Any]:
    d = result.to_dict()
    return {k: d[k] for k in ("answer_id", "refused", "refusal_layer", "citations", "grounded", "model", "evidence")}


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


@router.post("/v1/chat/completions", summary="OpenAI-compatible chat (model = collection)")
async def chat_completions(body: OAIChatRequest, principal: PrincipalDep, services: ServicesDep, request: Request):
    principal.require_collection(body.model)
    req = to_answer_request(body, principal.key_id)
    created = int(time.time())
    if not body.stream:
        result = await services.engine.answer(req)
        services.metrics.observe_answer(result, body.model)
        return {
            "id": f"chatcmpl-{result.answer_id}",
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result.answer}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "candor": _extras(result),
        }

    stream = services.engine.stream(req)
    first = await stream.__anext__()
    cid = f"chatcmpl-{int(time.time() * 1000)}"

    async def events() -> AsyncIterator[bytes]:
        yield sse_event(_chunk(cid, created, body.model, {"role": "assistant", "content": ""}, None))
        try:
            async for ev in prepend(first, stream):
                if ev["event"] == "token":
                    yield sse_event(_chunk(cid, created, body.model, {"content": ev["text"]}, None))
                else:
                    result = ev["result"]
                    services.metrics.observe_answer(result, body.model)
                    yield sse_event(_chunk(cid, created, body.model, {}, "stop", candor=_extras(result)))
        except CandorError as exc:
            status, err = error_payload(exc, request_id_of(request))
            yield sse_event({"error": {**err, "code": status}})
        yield sse_event("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/models", summary="Collections, as OpenAI models")
async def list_models(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    names = await anyio.to_thread.run_sync(list_collections, services.settings)
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "candor"} for n in names if principal.can_use(n)]
    return {"object": "list", "data": data}
