"""The chat API: an app factory, its lifespan and its middleware.

``create_app(settings)`` builds the process's services in the lifespan (the
answer store, the retriever, the LLM client, the prompt renderer and the
answer engine); the routes reach them through ``candor.service.deps``.
Run it with ``candor serve``.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candor import __version__, answerability, reader
from candor.answerability import AnswerabilityVerifier
from candor.decision import READER, VERIFIER, resolve_threshold, threshold_env
from candor.errors import InvalidInputError, NotFoundError
from candor.feedback.store import AnswerStore
from candor.ingest.retriever import Retriever
from candor.reader import PassageReader, load_reader
from candor.retrain.readers import serving_reader_folder
from candor.service import (
    routes_answers,
    routes_chat,
    routes_collections,
    routes_openai,
    routes_ops,
    routes_readers,
    routes_review,
    routes_web,
)
from candor.service.chat_template import PromptRenderer
from candor.service.deps import Services
from candor.service.errors import RequestId, install_error_handlers
from candor.service.llm_client import LLMClient
from candor.settings import Settings, apply_thread_settings, get_settings

log = logging.getLogger("candor.api")


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with 413, before anything is parsed or stored."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        seen = 0
        too_big = False

        async def limited_receive() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = b'{"error": "request body too large (limit %d bytes)"}' % self.max_bytes
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(HTTPException):
    """Raised while the body streams in. An HTTPException, so that FastAPI's body parser passes it
    on (it turns any other error into a 400 "error parsing the body") and the handler answers 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body too large (limit {max_bytes} bytes)")


def load_answerability(settings: Settings) -> PassageReader | None:
    """The answerability layer: the reader (``reader_path``), else the verifier (``verifier_path``), else
    None (then only the model refuses)."""
    check_answerability(settings)
    if settings.reader_path is not None:  # the reader registry's current version, else CANDOR_READER_PATH
        folder = serving_reader_folder(settings)
        model: PassageReader = load_reader(folder, settings)
    elif settings.verifier_path is not None:
        model = AnswerabilityVerifier(settings.verifier_path, settings.resolved_embed_model_path)
    else:
        return None
    threshold = resolve_threshold(settings, model.layer, model.threshold)
    log.info("answerability %s %s (threshold %s)", model.layer, model.version, threshold)
    return model


def check_answerability(settings: Settings) -> None:
    """Fail before serving, with a message, when the configured reader or verifier cannot work: its
    folder or files are missing or malformed, or it has no threshold (it would cost every request its
    scoring time and never refuse, while the first-token threshold is off whenever one is set)."""
    if settings.reader_path is not None:
        layer, folder = READER, serving_reader_folder(settings)
        stored, weights = reader.ReaderMeta.read(folder).threshold, reader.WEIGHTS_FILE
    elif settings.verifier_path is not None:
        layer, folder = VERIFIER, settings.verifier_path
        stored, weights = answerability.VerifierMeta.read(folder).threshold, answerability.WEIGHTS_FILE
    else:
        return
    if not (folder / weights).exists():
        raise NotFoundError(f"no {weights} in {folder}")
    if resolve_threshold(settings, layer, stored) is None:
        raise InvalidInputError(f"the model at {folder} stores no threshold: set {threshold_env(layer)}")


def build_services(settings: Settings) -> Services:
    """Everything the routes need. Heavy models load lazily, on first use or in warm-up."""
    store = AnswerStore(settings)
    store.migrate()
    retriever = Retriever(settings)
    llm = LLMClient(settings)
    renderer = PromptRenderer(settings.resolved_tokenizer_path)
    return Services.assemble(settings, store, retriever, llm, renderer, load_answerability(settings))


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if services is not None:
            app.state.services = services
        else:
            apply_thread_settings(settings.torch_threads)
            app.state.services = await anyio.to_thread.run_sync(build_services, settings)
        if settings.auth_disabled:
            log.warning("AUTH IS DISABLED (CANDOR_AUTH_DISABLED=true): every request is an admin. Local demos only.")
        await _warm_up(app.state.services)
        yield
        llm = app.state.services.llm
        if hasattr(llm, "aclose"):
            await llm.aclose()

    app = FastAPI(
        title="Candor",
        version=__version__,
        description="Answers from your documents, with citations, and says so when they do not hold the answer.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    for module in (
        routes_chat,
        routes_openai,
        routes_answers,
        routes_collections,
        routes_ops,
        routes_review,
        routes_readers,
    ):
        app.include_router(module.router)
    app.include_router(routes_web.router)  # the chat page at / (docs/feedback.md, "The chat page")

    # Added before the observer so it runs inside it: a body that turns out too large while it
    # streams in is then a 413 from the exception handlers (and counted), not a 400 "parse error".
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)

    @app.middleware("http")
    async def _observe(request: Any, call_next: Any) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        svc = getattr(request.app.state, "services", None)
        if svc is not None:
            svc.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
            svc.metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    app.add_middleware(RequestId)  # outermost: every response, the 413s included, carries X-Request-ID
    return app


async def _warm_up(services: Services) -> None:
    """Load the embedder and the tokenizer now rather than on the first question."""
    try:
        await anyio.to_thread.run_sync(services.retriever.warm_up)
        await anyio.to_thread.run_sync(services.renderer.count_tokens, [{"role": "user", "content": "warm up"}])
    except Exception as exc:  # a missing model is reported by /readyz and the first request
        log.warning("warm-up failed: %s", exc)
