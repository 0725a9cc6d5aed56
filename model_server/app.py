"""The embedded model server: a FastAPI app that speaks TGI's HTTP protocol.

Candor's service talks to real TGI (or vLLM) on a GPU and to this server on a
CPU, with the same client code. Routes and shapes follow
../shared/spec/tgi-openapi.json; docs/model-server.md lists the differences.

The HTTP layer only validates, admits (429 beyond max_concurrent_requests),
and relays events; generation runs on the engine's worker thread. The model
loads in the background after the port is bound, so /health answers 503
until it is ready. Every error is JSON ``{"error", "error_type"}``, never a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from candor import __version__
from candor.errors import CandorError, InvalidInputError, NotFoundError
from candor.generation import StopHold
from candor.model_server import openai_protocol as oai
from candor.model_server import tgi_protocol as tgi
from candor.model_server.adapters import AdapterSpec, check_adapter_name
from candor.model_server.model_engine import (
    EngineNotReady,
    ErrorEvent,
    GenerationJob,
    ModelEngine,
    StepEvent,
    UnknownAdapter,
)
from candor.model_server.onnx_engine import make_engine
from candor.model_server.server_metrics import ServerMetrics
from candor.settings import Settings

log = logging.getLogger(__name__)

ROUTER_NAME = "candor-embedded"
FINGERPRINT = f"candor-{__version__}"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Overloaded(CandorError):
    """More requests in flight than max_concurrent_requests."""


class GenerationFailed(CandorError):
    def __init__(self, message: str, error_type: str):
        super().__init__(message)
        self.error_type = error_type


class AdapterLoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    allow_base_mismatch: bool = False


def _error(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(tgi.error_body(message, error_type), status_code=status, headers=headers)


def _sse(payload: Any, space: bool = False) -> bytes:
    """TGI writes ``data:{json}``; the OpenAI routes write ``data: {json}``."""
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data:{' ' if space else ''}{body}\n\n".encode()


class _Admission:
    """Counts generation requests in flight; beyond the cap a request gets 429."""

    def __init__(self, limit: int, metrics: ServerMetrics):
        self.limit = limit
        self.current = 0
        self._metrics = metrics

    def enter(self) -> None:
        if self.current >= self.limit:
            raise Overloaded("Model is overloaded")
        self.current += 1
        self._metrics.in_flight.set(self.current)

    def leave(self) -> None:
        self.current -= 1
        self._metrics.in_flight.set(self.current)


class _Run:
    """One admitted, submitted job: events arrive on an asyncio queue from the worker thread.

    Admission (the 429 cap) is taken here and given back exactly once by
    ``close()``: at the end of the events, when the client goes away, or when
    a stream body is dropped before it was ever iterated.
    """

    def __init__(self, server: _Server, job: GenerationJob, adapter: str | None):
        self.server = server
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.adapter = adapter
        self._closed = False
        loop = asyncio.get_running_loop()

        def sink(event: Any) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, event)

        server.metrics.requests.inc()
        server.admission.enter()
        try:
            self.handle = server.engine.submit(job, sink)
        except BaseException:
            server.admission.leave()
            raise
        server.metrics.input_length.observe(len(job.input_ids))
        server.metrics.by_adapter.labels(adapter or "base").inc()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.handle.cancel()  # a no-op once finished; frees the batch row if the client left
            self.server.admission.leave()
            self.server.metrics.duration.observe(time.perf_counter() - self.started)

    def guard(self, body: Any) -> Any:
        """Close this run if a stream body is garbage-collected without being iterated."""
        weakref.finalize(body, self.close)
        return body

    async def events(self) -> AsyncIterator[StepEvent]:
        """Step events until the last; an ErrorEvent raises GenerationFailed."""
        try:
            while True:
                event = await self.queue.get()
                if isinstance(event, ErrorEvent):
                    raise GenerationFailed(event.message, event.error_type)
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                    self.server.metrics.first_token.observe(self.first_token_at - self.started)
                yield event
                if event.finish is not None:
                    self.server.metrics.success.inc()
                    self.server.metrics.generated.observe(event.finish.generated_tokens)
                    return
        finally:
            self.close()

    async def collect(self) -> tuple[list[StepEvent], Any]:
        events = [e async for e in self.events()]
        return events, events[-1].finish


class _Server:
    def __init__(self, settings: Settings, engine: ModelEngine):
        self.settings = settings
        self.engine = engine
        self.metrics = ServerMetrics(engine)
        self.admission = _Admission(settings.max_concurrent_requests, self.metrics)
        self.limits = tgi.Limits(settings.max_input_tokens, settings.max_total_tokens)

    def tokenizer(self) -> Any:
        if self.engine.state != "ready":
            raise EngineNotReady(f"the model is {self.engine.state}")
        return self.engine.tokenizer

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "model_id": self.engine.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "model_dtype": s.model_dtype if s.model_engine == "torch" else f"onnx {s.onnx_precision}",
            "model_engine": s.model_engine,
            "model_device_type": self.engine.device,
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_best_of": tgi.MAX_BEST_OF,
            "max_stop_sequences": tgi.MAX_STOP_SEQUENCES,
            "max_input_tokens": s.max_input_tokens,
            "max_total_tokens": s.max_total_tokens,
            "max_batch_size": s.max_batch_size,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": ROUTER_NAME,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "adapters": [a.name for a in self.engine.adapters()],
        }

    def job(self, v: Any, adapter: str | None, prefill_details: bool = False) -> GenerationJob:
        return GenerationJob(
            input_ids=list(v.input_ids),
            max_new_tokens=v.max_new_tokens,
            sampling=v.sampling,
            stop=v.stop,
            adapter=adapter,
            prefill_details=prefill_details,
        )

    def check_admin(self, request: Request) -> None:
        token = self.settings.model_server_admin_token
        if token and request.headers.get("authorization") != f"Bearer {token}":
            raise PermissionError("admin token required (Authorization: Bearer <token>)")


def create_app(
    settings: Settings,
    engine: ModelEngine | None = None,
    *,
    adapters: list[AdapterSpec] | None = None,
    allow_base_mismatch: bool = False,
    load: bool = True,
    on_load_failure: Any = None,
) -> FastAPI:
    """Build the app. ``load=False`` leaves loading to the caller (tests of the 503 state)."""
    engine = engine or make_engine(settings, adapters, allow_base_mismatch=allow_base_mismatch)
    server = _Server(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load and engine.state == "created":
            engine.start_loading(on_failure=on_load_failure)
        yield
        engine.stop()

    app = FastAPI(
        title="Candor model server (TGI protocol)",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = server
    app.state.engine = engine
    _install_error_handlers(app, server)
    _add_tgi_routes(app, server)
    _add_openai_routes(app, server)
    _add_admin_routes(app, server)
    return app


def _install_error_handlers(app: FastAPI, server: _Server) -> None:
    def count(err: str) -> None:
        server.metrics.failure.labels(err).inc()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        count("validation")
        return _error(422, "Input validation error: " + "; ".join(parts), "validation")

    @app.exception_handler(tgi.ValidationFailed)
    @app.exception_handler(UnknownAdapter)
    @app.exception_handler(InvalidInputError)
    async def _bad_input(request: Request, exc: Exception) -> JSONResponse:
        count("validation")
        return _error(422, str(exc), "validation")

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, str(exc), "not_found")

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Exception) -> JSONResponse:
        count("overloaded")
        return _error(429, "Model is overloaded", "overloaded")

    @app.exception_handler(EngineNotReady)
    async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
        count("unhealthy")
        return _error(503, str(exc), "unhealthy", headers={"Retry-After": "5"})

    @app.exception_handler(GenerationFailed)
    async def _failed(request: Request, exc: GenerationFailed) -> JSONResponse:
        count(exc.error_type)
        status = 503 if exc.error_type == "unhealthy" else 424
        return _error(status, str(exc), exc.error_type)

    @app.exception_handler(PermissionError)
    async def _forbidden(request: Request, exc: Exception) -> JSONResponse:
        return _error(401, str(exc), "unauthorized")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        count("internal")
        return _error(500, "internal error in the model server (see its log)", "internal")


# --- TGI routes -------------------------------------------------------------------------


def _add_tgi_routes(app: FastAPI, server: _Server) -> None:
    def start(request: tgi.GenerateRequest) -> tuple[_Run, tgi.ValidatedRequest]:
        v = tgi.validate_generate(request, server.tokenizer(), server.limits)
        return _Run(server, server.job(v, v.adapter_id, v.decoder_input_details), v.adapter_id), v

    async def generate_body(request: tgi.GenerateRequest) -> dict[str, Any]:
        run, v = start(request)
        events, finish = await run.collect()
        return tgi.generate_response(v, request.inputs, events, finish)

    async def stream(request: tgi.GenerateRequest) -> StreamingResponse:
        run, v = start(request)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for event in run.events():
                    yield _sse(tgi.stream_event(v, request.inputs, event))
            except GenerationFailed as exc:
                server.metrics.failure.labels(exc.error_type).inc()
                yield _sse(tgi.error_body(str(exc), exc.error_type))
            finally:
                run.close()

        return StreamingResponse(run.guard(body()), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/")
    async def compat_generate(request: tgi.CompatGenerateRequest) -> Any:
        """TGI's root route: what huggingface_hub's InferenceClient calls."""
        if request.stream:
            return await stream(request)
        return [await generate_body(request)]

    @app.post("/generate")
    async def generate(request: tgi.GenerateRequest) -> Any:
        return await generate_body(request)

    @app.post("/generate_stream")
    async def generate_stream(request: tgi.GenerateRequest) -> Any:
        return await stream(request)

    @app.get("/health")
    async def health() -> Response:
        if server.engine.state == "ready":
            return Response(status_code=200)
        return _error(503, "unhealthy", "healthcheck")

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return server.info()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(request: tgi.GenerateRequest) -> list[dict[str, Any]]:
        tokenizer = server.tokenizer()
        enc = tokenizer(request.inputs, add_special_tokens=True, return_offsets_mapping=True)
        return [
            {"id": tid, "text": request.inputs[start:stop], "start": start, "stop": stop}
            for tid, (start, stop) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]


# --- OpenAI-compatible routes ------------------------------------------------------------


def _add_openai_routes(app: FastAPI, server: _Server) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        base = server.engine.model_id
        data = [
            {
                "id": base,
                "object": "model",
                "created": created,
                "owned_by": "candor",
                "root": base,
                "parent": None,
                "max_model_len": server.settings.max_total_tokens,
            }
        ]
        for a in server.engine.adapters():
            data.append(
                {
                    "id": a.name,
                    "object": "model",
                    "created": created,
                    "owned_by": "candor",
                    "root": str(a.path),
                    "parent": base,
                    "max_model_len": server.settings.max_total_tokens,
                    "version": a.version,
                }
            )
        return {"object": "list", "data": data}

    def openai_stream(job: oai.OpenAIJob, run: _Run, chat: bool, include_usage: bool) -> StreamingResponse:
        chunk_id, created = oai.new_id("chatcmpl" if chat else "cmpl"), int(time.time())
        make = oai.chat_chunk if chat else oai.completion_chunk
        trimmer = StopHold(job.stop)  # text that may begin a stop sequence is held

        async def body() -> AsyncIterator[bytes]:
            try:
                async for event in run.events():
                    finish = event.finish
                    if finish is None:
                        piece = "" if event.token.special else trimmer.feed(event.token.text)
                        yield _sse(make(job, chunk_id, created, FINGERPRINT, piece, event, None), space=True)
                        continue
                    # The final token may complete a stop sequence: release up to it, no further.
                    piece = trimmer.finish(oai.cut_at_stop(finish.generated_text, finish.stop_sequence))
                    reason = oai.finish_reason(finish.finish_reason)
                    last_chunk = make(job, chunk_id, created, FINGERPRINT, piece, event, reason, finish.stop_sequence)
                    yield _sse(last_chunk, space=True)
                    if include_usage:
                        last = make(job, chunk_id, created, FINGERPRINT, "", None, None)
                        last["choices"] = []
                        last["usage"] = oai.usage(finish.input_length, finish.generated_tokens)
                        yield _sse(last, space=True)
            except GenerationFailed as exc:
                server.metrics.failure.labels(exc.error_type).inc()
                yield _sse(tgi.error_body(str(exc), exc.error_type), space=True)
            finally:
                run.close()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(run.guard(body()), media_type="text/event-stream", headers=SSE_HEADERS)

    async def respond(job: oai.OpenAIJob, stream: bool, include_usage: bool, chat: bool) -> Any:
        run = _Run(server, server.job(job, job.adapter_id), job.adapter_id)
        if stream:
            return openai_stream(job, run, chat, include_usage)
        events, finish = await run.collect()
        build = oai.chat_completion if chat else oai.completion
        return build(job, events, finish, FINGERPRINT)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: oai.ChatRequest) -> Any:
        job = oai.validate_chat(request, server.tokenizer(), server.limits, server.engine.model_id)
        usage = bool(request.stream_options and request.stream_options.include_usage)
        return await respond(job, bool(request.stream), usage, chat=True)

    @app.post("/v1/completions")
    async def completions(request: oai.CompletionRequest) -> Any:
        job = oai.validate_completion(request, server.tokenizer(), server.limits, server.engine.model_id)
        usage = bool(request.stream_options and request.stream_options.include_usage)
        return await respond(job, bool(request.stream), usage, chat=False)


# --- admin: adapters at run time -------------------------------------------------------


def _add_admin_routes(app: FastAPI, server: _Server) -> None:
    from pathlib import Path

    from starlette.concurrency import run_in_threadpool

    @app.get("/adapters")
    async def list_adapters() -> dict[str, Any]:
        return {"base_model": server.engine.model_id, "adapters": [a.as_dict() for a in server.engine.adapters()]}

    @app.post("/adapters")
    async def load_adapter(body: AdapterLoadRequest, request: Request) -> dict[str, Any]:
        """Load or replace an adapter without a restart (the retraining loop's hot swap)."""
        server.check_admin(request)
        spec = AdapterSpec(check_adapter_name(body.name), Path(body.path).expanduser())
        info = await run_in_threadpool(server.engine.load_adapter, spec, allow_base_mismatch=body.allow_base_mismatch)
        log.info("adapter %s loaded from %s (version %s)", info.name, info.path, info.version)
        return info.as_dict()

    @app.delete("/adapters/{name}")
    async def remove_adapter(name: str, request: Request) -> Response:
        server.check_admin(request)
        try:
            server.engine.remove_adapter(name)
        except UnknownAdapter as exc:
            raise NotFoundError(str(exc)) from None
        return Response(status_code=204)


# --- running it ------------------------------------------------------------------------------


def run_server(
    settings: Settings,
    adapters: list[AdapterSpec] | None = None,
    *,
    allow_base_mismatch: bool = False,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Check the model and adapters, bind the port, load in the background, serve.

    Problems found before loading (no base model, a bad adapter) raise
    CandorError before the port is bound; a failure while loading stops the
    server and is raised afterwards, so the process exits non-zero.
    """
    import uvicorn

    engine = make_engine(settings, adapters, allow_base_mismatch=allow_base_mismatch)
    engine.check()
    holder: dict[str, Any] = {}

    def on_failure(message: str) -> None:
        srv = holder.get("server")
        if srv is not None:
            srv.should_exit = True

    app = create_app(settings, engine, on_load_failure=on_failure)
    config = uvicorn.Config(
        app,
        host=host or settings.model_server_host,
        port=port or settings.model_server_port,
        log_level="info",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    holder["server"] = server
    server.run()
    if engine.state == "failed":
        raise CandorError(f"the model server could not load the model: {engine.error}")
