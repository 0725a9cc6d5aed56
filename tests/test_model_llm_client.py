"""The service's LLM client: both backends against the real server, and retries/typed errors
against a scripted fake server (real HTTP, scripted statuses).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi import Request
from fixtures.model import ThreadedApp, free_port

from candor.service.llm_client import (
    Generation,
    LLMBadRequest,
    LLMClient,
    LLMOverloaded,
    LLMUnavailable,
)
from candor.settings import load_settings

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
PROMPT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ANSWER = "The capital of France is Paris."


def client_for(url: str, **overrides) -> LLMClient:
    return LLMClient(load_settings(llm_url=url, **overrides))


async def collect(stream) -> tuple[list[str], Generation]:
    pieces, final = [], None
    async for ev in stream:
        if isinstance(ev, str):
            pieces.append(ev)
        else:
            final = ev
    assert final is not None
    return pieces, final


# --- against the real server -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tgi", "openai"])
def test_generate_and_stream_on_both_backends(model_server, backend: str) -> None:
    client = client_for(model_server.url, llm_backend=backend, max_new_tokens=20)

    async def scenario():
        info = await client.info()
        assert info.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert info.max_total_tokens == 2048 and 0 < info.max_input_tokens < 2048
        from_prompt = await client.generate(prompt=PROMPT)
        from_messages = await client.generate(messages=MESSAGES)
        pieces, final = await collect(client.stream(prompt=PROMPT))
        chat_pieces, chat_final = await collect(client.stream(messages=MESSAGES))
        stopped = await client.generate(prompt=PROMPT, stop=[" Paris"])
        stopped_stream = await collect(client.stream(prompt=PROMPT, stop=[" Paris"]))
        return from_prompt, from_messages, (pieces, final), (chat_pieces, chat_final), stopped, stopped_stream

    from_prompt, from_messages, (pieces, final), (chat_pieces, chat_final), stopped, stopped_stream = asyncio.run(
        scenario()
    )
    for gen in (from_prompt, from_messages, final, chat_final):
        assert gen.text == ANSWER
        assert gen.finish_reason == "eos_token"
        assert gen.generated_tokens == 8
        assert gen.adapter_id is None
        assert len(gen.first_token_top) == 5
        assert gen.first_token_top[0][0] == "The"  # greedy chose the most likely first token
        assert gen.first_token_top == sorted(gen.first_token_top, key=lambda t: -t[1])
        assert all(lp <= 0 for _, lp in gen.first_token_top)
    assert "".join(pieces) == ANSWER and "".join(chat_pieces) == ANSWER
    assert stopped.text == "The capital of France is" and stopped.finish_reason == "stop_sequence"
    # streamed, no piece of the stop sequence reaches the caller: the pieces are the final, cut text
    stop_pieces, stop_final = stopped_stream
    assert stop_final.text == "The capital of France is" and stop_final.finish_reason == "stop_sequence"
    assert "".join(stop_pieces) == stop_final.text


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tgi", "openai"])
def test_default_adapter_from_settings(model_server, tiny_adapter_server, backend: str) -> None:
    tuned = client_for(tiny_adapter_server.url, llm_backend=backend, llm_adapter="tiny", max_new_tokens=12)
    base = client_for(model_server.url, llm_backend=backend, max_new_tokens=12)

    async def scenario():
        info = await tuned.info()
        return (
            info,
            await tuned.generate(prompt=PROMPT),
            await tuned.generate(prompt=PROMPT, adapter_id=None),
            await base.generate(prompt=PROMPT),
            await tuned.adapters(),
        )

    info, with_adapter, explicit_base, plain, adapters = asyncio.run(scenario())
    assert with_adapter.adapter_id == "tiny" and with_adapter.text != plain.text
    assert explicit_base.text == plain.text and explicit_base.adapter_id is None
    assert [a["name"] for a in adapters] == ["tiny"]
    if backend == "tgi":
        assert tuned.adapter_version == adapters[0]["version"] and len(tuned.adapter_version) == 16


@pytest.mark.slow
def test_bad_request_and_health(model_server) -> None:
    client = client_for(model_server.url)

    async def scenario():
        with pytest.raises(LLMBadRequest, match="'nope' is not loaded"):
            await client.generate(prompt=PROMPT, adapter_id="nope")
        with pytest.raises(LLMBadRequest, match="must be <= 1536"):
            await client.generate(prompt="word " * 3000)
        return await client.health(), await client_for(f"http://127.0.0.1:{free_port()}").health()

    assert asyncio.run(scenario()) == (True, False)


# --- against a scripted fake server ---------------------------------------------------------


class FakeTGI(ThreadedApp):
    """A real HTTP server whose answers are scripted: a list of statuses, then success."""

    def __init__(self) -> None:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, StreamingResponse

        self.script: list[int] = []
        self.calls = 0
        self.delay_s = 0.0
        self.retry_after: str | None = "0"
        self.drop_stream = False
        app = FastAPI()

        def scripted() -> JSONResponse | None:
            self.calls += 1
            if self.script:
                status = self.script.pop(0)
                kind = {429: "overloaded", 422: "validation", 503: "unhealthy"}.get(status, "generation")
                headers = {"Retry-After": self.retry_after} if self.retry_after and status in (429, 503) else None
                return JSONResponse({"error": f"scripted {status}", "error_type": kind}, status, headers=headers)
            return None

        @app.post("/")
        async def generate(request: Request):
            body = await request.json()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            failure = scripted()
            if failure is not None:
                return failure
            if body.get("stream"):

                async def events():
                    tok = {"id": 1, "text": "Hi", "logprob": -0.1, "special": False}
                    if self.drop_stream:
                        yield "data:" + json.dumps({"index": 0, "token": tok}) + "\n\n"
                        raise RuntimeError("connection lost")  # uvicorn aborts the response
                    details = {"finish_reason": "length", "generated_tokens": 1, "seed": None, "input_length": 1}
                    final = {"index": 0, "token": tok, "generated_text": "Hi", "details": details}
                    yield "data:" + json.dumps(final) + "\n\n"

                return StreamingResponse(events(), media_type="text/event-stream")
            details = {
                "finish_reason": "length",
                "generated_tokens": 1,
                "seed": None,
                "prefill": [],
                "tokens": [{"id": 1, "text": "Hi", "logprob": -0.1, "special": False}],
                "top_tokens": [[{"id": 1, "text": "Hi", "logprob": -0.1, "special": False}]],
            }
            return [{"generated_text": "Hi", "details": details}]

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            failure = scripted()
            if failure is not None:
                return failure
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }

        super().__init__(app)


@pytest.fixture
def fake():
    with FakeTGI() as server:
        yield server


def run(coro):
    return asyncio.run(coro)


def test_retries_429_then_succeeds(fake: FakeTGI) -> None:
    fake.script = [429, 503]
    gen = run(client_for(fake.url, llm_retries=2).generate(prompt="x"))
    assert gen.text == "Hi" and gen.first_token_top == [("Hi", -0.1)]
    assert fake.calls == 3


def test_429_after_retries_is_overloaded(fake: FakeTGI) -> None:
    fake.script = [429, 429, 429]
    with pytest.raises(LLMOverloaded, match="overloaded"):
        run(client_for(fake.url, llm_retries=2).generate(prompt="x"))
    assert fake.calls == 3


def test_503_after_retries_is_unavailable_with_backoff(fake: FakeTGI) -> None:
    fake.script = [503, 503]
    fake.retry_after = None  # exponential backoff: 0.5 s then (no more retries)
    started = time.monotonic()
    with pytest.raises(LLMUnavailable, match="unavailable"):
        run(client_for(fake.url, llm_retries=1).generate(prompt="x"))
    assert fake.calls == 2 and time.monotonic() - started >= 0.5


@pytest.mark.parametrize("status, error", [(422, LLMBadRequest), (500, LLMUnavailable), (424, LLMUnavailable)])
def test_other_errors_are_not_retried(fake: FakeTGI, status: int, error: type) -> None:
    fake.script = [status]
    with pytest.raises(error):
        run(client_for(fake.url, llm_retries=3).generate(prompt="x"))
    assert fake.calls == 1


def test_timeout_is_unavailable_and_not_retried(fake: FakeTGI) -> None:
    fake.delay_s = 2.0
    with pytest.raises(LLMUnavailable, match="did not answer within 0.3"):
        run(client_for(fake.url, llm_timeout_s=0.3, llm_retries=2).generate(prompt="x"))
    assert fake.calls == 0  # the fake never got to answer


def test_connection_refused_is_unavailable() -> None:
    with pytest.raises(LLMUnavailable, match="cannot reach"):
        run(client_for(f"http://127.0.0.1:{free_port()}").generate(prompt="x"))


def test_stream_retries_before_the_first_event_and_fails_cleanly_after(fake: FakeTGI) -> None:
    fake.script = [503]
    pieces, final = run(collect(client_for(fake.url).stream(prompt="x")))
    assert pieces == ["Hi"] and final.text == "Hi" and final.finish_reason == "length"
    assert fake.calls == 2


def test_stream_cut_mid_way_is_unavailable(fake: FakeTGI) -> None:
    fake.drop_stream = True

    async def scenario():
        got = []
        with pytest.raises(LLMUnavailable):
            async for ev in client_for(fake.url).stream(prompt="x"):
                got.append(ev)
        return got

    assert run(scenario()) == ["Hi"]


def test_openai_backend_retries_and_parses(fake: FakeTGI) -> None:
    fake.script = [429]
    gen = run(client_for(fake.url, llm_backend="openai", llm_adapter="a").generate(messages=MESSAGES))
    assert gen.text == "Hi" and gen.finish_reason == "length" and gen.prompt_tokens == 3
    assert fake.calls == 2


def test_exactly_one_of_prompt_or_messages() -> None:
    from candor.errors import InvalidInputError

    client = client_for("http://127.0.0.1:9")
    with pytest.raises(InvalidInputError):
        run(client.generate())
    with pytest.raises(InvalidInputError):
        run(client.generate(prompt="x", messages=MESSAGES))


def test_client_errors_are_candor_errors() -> None:
    from candor.errors import CandorError, InvalidInputError, UnavailableError

    assert issubclass(LLMUnavailable, UnavailableError) and issubclass(LLMOverloaded, UnavailableError)
    assert issubclass(LLMBadRequest, InvalidInputError) and issubclass(LLMBadRequest, CandorError)
