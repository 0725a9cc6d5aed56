"""FastAPI dependencies: the service container, the caller's key, rate limits."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, status

from candor.feedback.store import AnswerStore
from candor.ingest.retriever import Retriever
from candor.reader import PassageReader
from candor.service.answering import AnswerEngine
from candor.service.auth import ANONYMOUS_ADMIN, Principal, presented_key
from candor.service.chat_template import PromptRenderer
from candor.service.llm_client import LLMClient
from candor.service.metrics import ApiMetrics
from candor.service.rate_limit import RateLimiter
from candor.settings import Settings

log = logging.getLogger("candor.api")


@dataclass
class Services:
    """What the routes need, built once per process in the app's lifespan."""

    settings: Settings
    store: AnswerStore
    retriever: Retriever
    llm: LLMClient
    renderer: PromptRenderer
    engine: AnswerEngine
    limiter: RateLimiter
    metrics: ApiMetrics

    @classmethod
    def assemble(
        cls,
        settings: Settings,
        store: AnswerStore,
        retriever: Retriever,
        llm: LLMClient,
        renderer: PromptRenderer,
        answerability: PassageReader | None = None,
    ) -> Services:
        """The services over these collaborators: the answer engine, a rate limiter and fresh metrics."""
        engine = AnswerEngine(settings, retriever, llm, renderer, store, answerability)
        limiter = RateLimiter(settings.rate_limit_per_minute)
        return cls(settings, store, retriever, llm, renderer, engine, limiter, ApiMetrics())


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(request: Request, services: ServicesDep) -> Principal:
    if services.settings.auth_disabled:
        return ANONYMOUS_ADMIN
    secret = presented_key(request)
    if secret is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "an API key is required (Authorization: Bearer <key> or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = await anyio.to_thread.run_sync(services.store.authenticate, secret)
    if key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    wait = services.limiter.check(key.id)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "rate limit exceeded for this API key",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    collections = frozenset(key.collections) if key.collections is not None else None
    return Principal(key_id=key.id, role=str(key.role), collections=collections, trusted=key.trusted)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    principal.require_admin()
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
