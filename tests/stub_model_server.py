"""A tiny TGI-shaped stub of the model server, for input-handling tests only.

Fuzzing the API (thousands of generated requests) against the real model would
spend the whole CI budget generating tokens that the fuzzer does not look at:
what it tests is how the API parses, validates, authorises and maps errors.
This stub answers the TGI routes the LLM client calls (``/health``, ``/info``,
``POST /`` with and without ``stream``, ``/generate``, ``/generate_stream``) with
a fixed short answer, in the shapes huggingface_hub's client reads. Real
generation is covered by the tests that use the real model server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

STUB_MODEL_ID = "stub/tiny-tgi"
STUB_TEXT = "Candor uses the MiniLM embedding model."


def _token(i: int, text: str) -> dict[str, Any]:
    return {"id": 100 + i, "text": text, "logprob": -0.1, "special": False}


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]


def build_stub_app(text: str = STUB_TEXT, max_input_tokens: int = 1536, max_total_tokens: int = 2048):
    """A FastAPI app speaking enough TGI for the API's LLM client."""
    app = FastAPI()
    app.state.calls = 0

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "model_id": STUB_MODEL_ID,
            "max_input_tokens": max_input_tokens,
            "max_total_tokens": max_total_tokens,
            "max_stop_sequences": 4,
            "max_concurrent_requests": 128,
            "router": "candor-stub",
            "version": "0",
        }

    def _reply(body: dict[str, Any]) -> tuple[list[str], int]:
        params = body.get("parameters") or {}
        limit = int(params.get("max_new_tokens") or 20)
        words = _words(text)[: max(1, limit)]
        return words, int(params.get("top_n_tokens") or 0)

    def _details(words: list[str], top_n: int) -> dict[str, Any]:
        d: dict[str, Any] = {
            "finish_reason": "eos_token",
            "generated_tokens": len(words),
            "seed": None,
            "prefill": [],
            "tokens": [_token(i, w) for i, w in enumerate(words)],
        }
        if top_n:
            d["top_tokens"] = [[_token(i, w)] for i, w in enumerate(words)]
        return d

    def _stream(words: list[str], top_n: int) -> StreamingResponse:
        async def events() -> Iterator[bytes]:
            for i, w in enumerate(words):
                last = i == len(words) - 1
                ev = {
                    "index": i,
                    "token": _token(i, w),
                    "top_tokens": [_token(i, w)] if top_n else [],
                    "generated_text": "".join(words) if last else None,
                    "details": (
                        {
                            "finish_reason": "eos_token",
                            "generated_tokens": len(words),
                            "seed": None,
                            "input_length": 10,
                        }
                        if last
                        else None
                    ),
                }
                yield ("data:" + json.dumps(ev) + "\n\n").encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _handle(request: Request, stream: bool | None) -> Any:
        request.app.state.calls += 1
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "bad json", "error_type": "validation"}, status_code=422)
        words, top_n = _reply(body)
        if stream is None:
            stream = bool(body.get("stream"))
        if stream:
            return _stream(words, top_n)
        out = {"generated_text": "".join(words), "details": _details(words, top_n)}
        return out

    @app.post("/")
    async def compat(request: Request) -> Any:
        res = await _handle(request, None)
        return res if isinstance(res, (StreamingResponse, JSONResponse)) else [res]

    @app.post("/generate")
    async def generate(request: Request) -> Any:
        return await _handle(request, False)

    @app.post("/generate_stream")
    async def generate_stream(request: Request) -> Any:
        return await _handle(request, True)

    return app


@dataclass
class StubServer:
    url: str
    app: Any

    @property
    def calls(self) -> int:
        return int(self.app.state.calls)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_stub(text: str = STUB_TEXT) -> Iterator[StubServer]:
    """Serve the stub on a free loopback port in a background thread."""
    import httpx
    import uvicorn

    app = build_stub_app(text)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("stub model server did not start")
        time.sleep(0.05)
    try:
        yield StubServer(url, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
